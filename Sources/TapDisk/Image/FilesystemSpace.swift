import Glibc

/// A statvfs/fstat sample of a file image and its filesystem, for `image-space`, auto-resume and
/// `low-space` (docs/protocol.md §2.2, §6).
package struct FilesystemSpace: Sendable, Equatable {
    package var apparentBytes: UInt64
    package var allocatedBytes: UInt64
    /// `f_bavail * f_frsize`: what an unprivileged writer can still allocate.
    package var freeBytes: UInt64
    /// `f_blocks * f_frsize`.
    package var totalBytes: UInt64

    /// `max(0, max(0, apparent - allocated) - fs-free)`: how much of the image's promise the
    /// filesystem cannot keep.
    package var overcommitBytes: UInt64 {
        let unallocated = apparentBytes > allocatedBytes ? apparentBytes - allocatedBytes : 0
        return unallocated > freeBytes ? unallocated - freeBytes : 0
    }

    package init(apparentBytes: UInt64, allocatedBytes: UInt64, freeBytes: UInt64, totalBytes: UInt64) {
        self.apparentBytes = apparentBytes
        self.allocatedBytes = allocatedBytes
        self.freeBytes = freeBytes
        self.totalBytes = totalBytes
    }

    package init?(fd: Int32) {
        var vfs = statvfs()
        var st = stat()
        guard fstatvfs(fd, &vfs) == 0, fstat(fd, &st) == 0 else { return nil }
        apparentBytes = UInt64(st.st_size)
        allocatedBytes = UInt64(st.st_blocks) * 512
        freeBytes = UInt64(vfs.f_bavail) * UInt64(vfs.f_frsize)
        totalBytes = UInt64(vfs.f_blocks) * UInt64(vfs.f_frsize)
    }
}
