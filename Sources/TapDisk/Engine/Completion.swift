import Glibc

/// How the core ended a request, in terms every front can translate: blkif and virtio keep only
/// the status, a front that can carry the errno (NBD) sends it by name.
///
/// The errno is the one the core acted on: the kernel's (or the fault seam's) for a failed
/// transfer or sync, the failure policy's for a held request failed later (timeout, `fail-held`,
/// detach, a stopping virtqueue), EIO for a FLUSH or BARRIER refused after a failed sync (§5.3),
/// and EINVAL for a request that lies beyond the end of an image that shrank after it was
/// validated (it was valid when consumed; ENOSPC would tell a client to free space, which cannot
/// help).
package struct Completion: Sendable, Equatable {
    package enum Status: UInt8, Sendable { case ok, error, notSupported }
    package var status: Status
    /// The errno behind an error: ENOSPC, EIO, EROFS, EINVAL, ...; 0 for ok, EOPNOTSUPP for notSupported.
    package var errno: Int32

    package init(status: Status, errno: Int32) {
        self.status = status
        self.errno = errno
    }

    package static let ok = Completion(status: .ok, errno: 0)
    package static let notSupported = Completion(status: .notSupported, errno: EOPNOTSUPP)
    package static func error(_ errno: Int32) -> Completion { Completion(status: .error, errno: errno) }
}
