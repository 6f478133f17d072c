import CLibAIO
import Glibc

/// A libaio context bound to one completion eventfd: the disk's only way to the kernel's I/O.
///
/// It is also the fault-injection seam: in debug (test) builds `faults` can rewrite what
/// `io_submit` returns and what completions report, so every error path of the engine runs in
/// tests without needing a broken disk. Release builds compile the seam out.
package struct AIOContext: ~Copyable {
    private let context: io_context_t
    /// Becomes readable when completions are waiting; the engine epolls it.
    package let eventFD: FileDescriptor
    package let capacity: Int32
    /// The kernel's completion ring can be read without `io_getevents` (checked once at setup).
    package let userReap: Bool

    #if TAPDISK_FAULT_INJECTION
        package var faults = FaultInjector()
    #endif

    package init(capacity: Int32) throws(Errno) {
        var ctx: io_context_t? = nil
        _ = try Errno.check(clibaio_setup(UInt32(capacity), &ctx))
        guard let ctx else { throw Errno(rawValue: EINVAL) }
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.eventFD()
        } catch {
            _ = clibaio_destroy(ctx)
            throw error
        }
        self.context = ctx
        self.eventFD = fd
        self.capacity = capacity
        self.userReap = clibaio_user_reap_supported(ctx) == 1
    }

    deinit { _ = clibaio_destroy(context) }

    /// `io_submit`: how many of `count` iocbs the kernel accepted (a prefix), or `-errno` when it
    /// accepted none (the errno then belongs to the first iocb, or is EAGAIN for "try later").
    @inline(__always)
    package mutating func submit(_ iocbs: UnsafeMutablePointer<UnsafeMutablePointer<iocb>?>, count: Int) -> Int32 {
        #if TAPDISK_FAULT_INJECTION
            if let injected = faults.interceptSubmit(count: count) {
                if injected <= 0 { return injected }
                return clibaio_submit(context, Int(injected), iocbs)
            }
        #endif
        return clibaio_submit(context, count, iocbs)
    }

    /// Whether completions are waiting, without a syscall (false when the ring is unreadable).
    @inline(__always)
    package var hasCompletions: Bool { userReap && clibaio_user_pending(context) == 1 }

    /// Non-blocking reap of up to `max` completions into `events`: from the mapped ring when the
    /// kernel allows it (no syscall: what makes polling cheap), else `io_getevents`.
    @inline(__always)
    package mutating func reap(into events: UnsafeMutablePointer<io_event>, max: Int) -> Int32 {
        var n = userReap ? clibaio_user_reap(context, max, events) : clibaio_getevents(context, max, events)
        if n == -EINVAL && userReap { n = clibaio_getevents(context, max, events) }
        #if TAPDISK_FAULT_INJECTION
            if n > 0 {
                for i in 0..<Int(n) { faults.interceptCompletion(&events[i]) }
            }
        #endif
        return n
    }
}
