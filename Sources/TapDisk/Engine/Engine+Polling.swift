import CLibAIO
import Glibc

/// What `DiskLoop` needs to poll instead of sleeping: work visible without a syscall, arming the
/// ring before a sleep, and the completion latency that sizes the polling window.
extension Engine {
    /// Resets the completion eventfd after epoll reported it; `service` then reaps.
    @inline(__always)
    package func drainCompletionSignal() { aio.eventFD.drain() }

    /// Resets the kick eventfd after epoll reported it; `service` then consumes.
    @inline(__always)
    package func drainKickSignal() {
        var value: UInt64 = 0
        if kickFD >= 0 { _ = clibaio_eventfd_drain(kickFD, &value) }
    }

    /// Work that `service` would find now, seen without a syscall: completions in the kernel's
    /// mapped ring, or requests on the front (blkif ring or virtqueue).
    @inline(__always)
    package var hasVisibleWork: Bool {
        isAttached && (aio.hasCompletions || (canConsume && frontHasRequests(arm: false)))
    }

    /// Completions can be seen without a syscall, so polling for them is worth it.
    package var canPollCompletions: Bool { aio.userReap }

    /// Before the loop sleeps after polling: arm `req_event` and re-check (Xen's final check),
    /// and reset the completion eventfd that polling left set (what polling already reaped made
    /// it readable). True when work arrived meanwhile and the loop must not sleep.
    package func prepareToSleep() -> Bool {
        guard isAttached else { return false }
        if aio.userReap { aio.eventFD.drain() }
        let requests = canConsume && frontHasRequests(arm: true)
        return requests || aio.hasCompletions
    }

    @inline(__always)
    func noteLatency(_ nanos: UInt64) {
        let current = completionLatencyNanos
        if current == 0 {
            completionLatencyNanos = nanos
        } else if nanos >= current {
            completionLatencyNanos = current + (nanos - current) / 8
        } else {
            completionLatencyNanos = current - (current - nanos) / 8
        }
    }
}
