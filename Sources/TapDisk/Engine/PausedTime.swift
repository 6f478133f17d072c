/// Time spent paused, per reason, for `stats`' `paused-seconds` (and the exporter's
/// `tapdiskd_paused_seconds_total`).
///
/// Accumulated at state changes only, never per request: a pause's length is added when it
/// ends, and the one in progress is added when read, so a running disk pays nothing for it.
package struct PausedTime: Sendable, Equatable {
    private var operatorNanos: UInt64 = 0
    private var nospaceNanos: UInt64 = 0
    private var ioErrorNanos: UInt64 = 0
    /// The pause in progress: its reason and start.
    private var current: (reason: PauseReason, since: UInt64)? = nil

    package init() {}

    package static func == (a: PausedTime, b: PausedTime) -> Bool {
        a.operatorNanos == b.operatorNanos && a.nospaceNanos == b.nospaceNanos && a.ioErrorNanos == b.ioErrorNanos
            && a.current?.reason == b.current?.reason && a.current?.since == b.current?.since
    }

    /// Records a state change at `now` (monotonic ns): ends the pause in progress, if any, and
    /// starts one if `new` is paused (a change of reason does both).
    mutating func transition(to new: DiskState, now: UInt64) {
        if let c = current {
            add(c.reason, now &- c.since)
            current = nil
        }
        if case .paused(let reason) = new { current = (reason, now) }
    }

    /// Nanoseconds paused for `reason` up to `now`, the pause in progress included.
    package func nanoseconds(_ reason: PauseReason, now: UInt64) -> UInt64 {
        var total: UInt64
        switch reason {
        case .operatorRequest: total = operatorNanos
        case .nospace: total = nospaceNanos
        case .ioError: total = ioErrorNanos
        }
        if let c = current, c.reason == reason, now > c.since { total &+= now - c.since }
        return total
    }

    private mutating func add(_ reason: PauseReason, _ nanos: UInt64) {
        switch reason {
        case .operatorRequest: operatorNanos &+= nanos
        case .nospace: nospaceNanos &+= nanos
        case .ioError: ioErrorNanos &+= nanos
        }
    }
}
