import Glibc

/// Sole owner of a `MAP_SHARED` mapping of the frontend's memfd.
///
/// The engine unmaps only by dropping this owner, and it keeps the owner until the last iocb
/// pointing into the pages has completed: the kernel may still be DMA-ing into them.
package struct SharedMapping: ~Copyable {
    package let base: UnsafeMutableRawPointer
    package let byteCount: Int

    /// Maps `byteCount` bytes of `fd` shared and writable.
    package init(fd: borrowing FileDescriptor, byteCount: Int) throws(Errno) {
        try self.init(rawFD: fd.rawValue, byteCount: byteCount)
    }

    /// Maps an fd this code does not own (one just received over the socket).
    package init(rawFD: Int32, byteCount: Int) throws(Errno) {
        guard byteCount > 0 else { throw Errno(rawValue: EINVAL) }
        let p = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_SHARED, rawFD, 0)
        guard let p, p != MAP_FAILED else { throw Errno.current }
        self.base = p
        self.byteCount = byteCount
    }

    deinit { munmap(base, byteCount) }
}
