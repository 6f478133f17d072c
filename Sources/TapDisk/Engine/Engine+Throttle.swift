import CLibAIO

/// Per-disk QoS (docs/protocol.md §9): the engine's side of `Throttle`.
///
/// A request over budget is simply not consumed yet: `canConsume` asks `admitUnderLimits`
/// before each request, whatever the front, so the frontend sees back-pressure (its ring or
/// virtqueue fills) and never an error, ordering is untouched (nothing is reordered, only
/// delayed), and pause, ENOSPC and events work as without a limit. While consumption waits,
/// `throttleTimer` is armed for the moment the buckets allow the next request; `DiskLoop` watches
/// it, so the wait does not depend on any periodic tick.
extension Engine {
    /// The timerfd `DiskLoop` watches (readable when a wait is over).
    package var throttleTimerFD: Int32 { throttleTimer.rawValue }

    /// New limits (`--limit`, `set-limits`), effective at once: buckets start empty, and a disk
    /// held back by the old limits is serviced now rather than when the old wait would have ended.
    package func setLimits(_ limits: ThrottleLimits) {
        throttle.configure(limits, now: MonotonicClock.nanoseconds())
        if throttleDeadline != 0 {
            _ = clibaio_qos_timer_disarm(throttleTimer.rawValue)
            throttleDeadline = 0
        }
        service()
    }

    /// A limit holds a waiting request back now (`status`' `throttled`).
    package var isThrottled: Bool {
        guard throttle.isEnabled, isAttached, state == .running else { return false }
        return throttle.wait(now: MonotonicClock.nanoseconds()) > 0 && frontHasRequests(arm: false)
    }

    /// The slow half of the gate, reached only when a limit is set: true when the buckets allow
    /// the next request now; otherwise arms the timer for when they will, and counts the wait
    /// if a request is there to wait.
    func admitUnderLimits() -> Bool {
        let now = MonotonicClock.nanoseconds()
        let wait = throttle.wait(now: now)
        if wait == 0 {
            if throttle.isWaiting { throttle.endWait(now: now) }
            return true
        }
        if !throttle.isWaiting && isAttached && frontHasRequests(arm: false) { throttle.beginWait(now: now) }
        // Armed even with nothing waiting: the loop returns without arming the ring's req_event
        // while consumption is stopped, so a request posted now would announce itself to no one.
        // The timer wakes the loop once the wait is over, and the next `service` arms the ring.
        let deadline = now &+ wait
        // Re-armed only when it would fire too late (a floating-point rounding of the same
        // deadline must not cost a syscall per check).
        if throttleDeadline == 0 || throttleDeadline > deadline &+ 10_000 {
            if clibaio_qos_timer_arm(throttleTimer.rawValue, deadline) == 0 { throttleDeadline = deadline }
        }
        return false
    }

    /// Resets the timer after epoll reported it; `service` then consumes what the limit allows.
    package func drainThrottleTimer() {
        var value: UInt64 = 0
        _ = clibaio_eventfd_drain(throttleTimer.rawValue, &value)
        throttleDeadline = 0
        throttle.endWait(now: MonotonicClock.nanoseconds())
    }

    /// Charges a just-consumed request to the buckets: READ as a read, WRITE and the data of a
    /// FLUSH or BARRIER as a write; no-data FLUSH/BARRIER, DISCARD and WRITE_ZEROES cost nothing.
    @inline(__always)
    func chargeLimits(_ record: RequestRecord) {
        switch record.operation {
        case .read: throttle.charge(write: false, bytes: record.dataBytes, now: record.consumedAt)
        case .write: throttle.charge(write: true, bytes: record.dataBytes, now: record.consumedAt)
        case .flush, .barrier:
            if record.dataBytes > 0 { throttle.charge(write: true, bytes: record.dataBytes, now: record.consumedAt) }
        case .discard, .writeZeroes: break
        }
    }
}
