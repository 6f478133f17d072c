import CLibAIO
import Glibc

/// Sole owner of a file descriptor: closing happens exactly once, when the owner goes away.
///
/// `~Copyable` makes double-close and use-after-close compile errors rather than races on fd
/// numbers the kernel has already handed to someone else (an eventfd slot reused as an image fd
/// would silently redirect I/O).
package struct FileDescriptor: ~Copyable {
    package let rawValue: Int32

    package init(adopting rawValue: Int32) { self.rawValue = rawValue }

    deinit { if rawValue >= 0 { _ = Glibc.close(rawValue) } }

    /// Gives up ownership without closing (for fds handed to another owner such as systemd).
    package consuming func release() -> Int32 {
        let fd = rawValue
        discard self
        return fd
    }

    /// Opens a path without the variadic `open(2)` (O_DIRECT and friends come from CLibAIO).
    package static func open(_ path: String, flags: Int32, mode: UInt32 = 0o644) throws(Errno) -> FileDescriptor {
        let fd = try Errno.check(clibaio_open(path, flags | clibaio_O_CLOEXEC, mode))
        return FileDescriptor(adopting: fd)
    }

    package static func eventFD(nonBlocking: Bool = true, semaphore: Bool = false) throws(Errno) -> FileDescriptor {
        var flags = clibaio_EFD_CLOEXEC
        if nonBlocking { flags |= clibaio_EFD_NONBLOCK }
        if semaphore { flags |= clibaio_EFD_SEMAPHORE }
        return FileDescriptor(adopting: try Errno.check(clibaio_eventfd(0, flags)))
    }

    /// Adds 1 to an eventfd counter. A saturated counter (EAGAIN) already means "readable", so it
    /// counts as delivered: the reader will wake up either way.
    @inline(__always)
    package func signal() {
        _ = clibaio_eventfd_signal(rawValue)
    }

    /// Resets an eventfd counter; EAGAIN (already zero) is expected after coalesced wakeups.
    @inline(__always)
    @discardableResult
    package func drain() -> UInt64 {
        var value: UInt64 = 0
        return clibaio_eventfd_drain(rawValue, &value) == 0 ? value : 0
    }

    package func duplicate() throws(Errno) -> FileDescriptor {
        try Self.duplicate(raw: rawValue)
    }

    /// A new owned descriptor for the same open file (the original stays with its owner).
    package static func duplicate(raw: Int32) throws(Errno) -> FileDescriptor {
        let fd = fcntl(raw, F_DUPFD_CLOEXEC, 0)
        if fd < 0 { throw Errno.current }
        return FileDescriptor(adopting: fd)
    }
}
