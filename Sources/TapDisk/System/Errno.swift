import Glibc

/// An errno value carried by every failing system call in tapdiskd.
///
/// Typed throws with this one error type keep error paths allocation-free and let callers switch
/// on the exact errno (ENOSPC and EDQUOT pick the no-space policy, EOPNOTSUPP a DISCARD status).
package struct Errno: Error, Hashable, Sendable, CustomStringConvertible {
    package var rawValue: Int32

    package init(rawValue: Int32) { self.rawValue = rawValue }

    /// Captures the calling thread's errno (for Glibc calls that return -1).
    package static var current: Errno { Errno(rawValue: errno) }

    /// Converts a `-errno` return (libaio, CLibAIO) into a value or a thrown error.
    @inline(__always)
    package static func check(_ rc: Int32) throws(Errno) -> Int32 {
        if rc < 0 { throw Errno(rawValue: -rc) }
        return rc
    }

    /// ENOSPC and EDQUOT: the failures the `--on-nospace` policy governs.
    package var isNoSpace: Bool { rawValue == ENOSPC || rawValue == EDQUOT }

    /// The symbolic name, as events and logs report it (`"ENOSPC"`).
    package var name: String {
        switch rawValue {
        case EPERM: "EPERM"
        case ENOENT: "ENOENT"
        case EINTR: "EINTR"
        case EIO: "EIO"
        case ENXIO: "ENXIO"
        case EBADF: "EBADF"
        case EAGAIN: "EAGAIN"
        case ENOMEM: "ENOMEM"
        case EACCES: "EACCES"
        case EFAULT: "EFAULT"
        case EBUSY: "EBUSY"
        case EEXIST: "EEXIST"
        case ENODEV: "ENODEV"
        case ENOTDIR: "ENOTDIR"
        case EISDIR: "EISDIR"
        case EINVAL: "EINVAL"
        case ENFILE: "ENFILE"
        case EMFILE: "EMFILE"
        case ENOTTY: "ENOTTY"
        case EFBIG: "EFBIG"
        case ENOSPC: "ENOSPC"
        case ESPIPE: "ESPIPE"
        case EROFS: "EROFS"
        case EPIPE: "EPIPE"
        case ERANGE: "ERANGE"
        case ENAMETOOLONG: "ENAMETOOLONG"
        case ENOSYS: "ENOSYS"
        case EOPNOTSUPP: "EOPNOTSUPP"
        case EADDRINUSE: "EADDRINUSE"
        case ECONNREFUSED: "ECONNREFUSED"
        case ECONNRESET: "ECONNRESET"
        case ETIMEDOUT: "ETIMEDOUT"
        case EDQUOT: "EDQUOT"
        case ENOTSOCK: "ENOTSOCK"
        case EMSGSIZE: "EMSGSIZE"
        case ENOMEDIUM: "ENOMEDIUM"
        case EREMOTEIO: "EREMOTEIO"
        case ESRCH: "ESRCH"
        case E2BIG: "E2BIG"
        case ENOEXEC: "ENOEXEC"
        case ECHILD: "ECHILD"
        case ENOTBLK: "ENOTBLK"
        case EXDEV: "EXDEV"
        case ETXTBSY: "ETXTBSY"
        case EMLINK: "EMLINK"
        case EDOM: "EDOM"
        case EDEADLK: "EDEADLK"
        case ENOLCK: "ENOLCK"
        case ENOTEMPTY: "ENOTEMPTY"
        case ELOOP: "ELOOP"
        case EOVERFLOW: "EOVERFLOW"
        case EPROTOTYPE: "EPROTOTYPE"
        case EPROTONOSUPPORT: "EPROTONOSUPPORT"
        case EAFNOSUPPORT: "EAFNOSUPPORT"
        case EADDRNOTAVAIL: "EADDRNOTAVAIL"
        case ENOBUFS: "ENOBUFS"
        case ENOTCONN: "ENOTCONN"
        case ECONNABORTED: "ECONNABORTED"
        case ESTALE: "ESTALE"
        default: "E\(rawValue)"
        }
    }

    package var description: String {
        "\(name) (\(String(cString: strerror(rawValue))))"
    }
}
