/// A disk's six buckets (`ThrottleLimits`) and what the engine asks of them: may a request be
/// consumed now, and if not, for how long must consumption wait; then charging the consumed one.
///
/// The engine does not know what the next request is until it has consumed it, so the question
/// is asked of all six buckets: while any is over its size nothing is consumed, reads and writes
/// alike (QEMU asks only the buckets of the request's direction, because its block layer has
/// already taken the request off the queue). A limit on one direction therefore also delays the
/// other while that direction is in debt. With a bounded queue the effect is much the same in
/// QEMU: requests waiting for one direction fill the guest's queue and hold back the other.
///
/// Time is passed in (monotonic nanoseconds), never read here, so the arithmetic is tested with
/// an injected clock. No heap storage: the engine checks it on the per-request path.
package struct Throttle: Sendable {
    package private(set) var limits = ThrottleLimits()
    /// Any limit is set: the one test the engine makes per request when none is.
    package private(set) var isEnabled = false
    private var iopsTotal = LeakyBucket()
    private var iopsRead = LeakyBucket()
    private var iopsWrite = LeakyBucket()
    private var bpsTotal = LeakyBucket()
    private var bpsRead = LeakyBucket()
    private var bpsWrite = LeakyBucket()
    private var lastLeak: UInt64 = 0

    /// Time a waiting request spent held back by a limit, and how many times a waiting request
    /// was (`stats`' `throttled-seconds` and `throttle-delayed-requests`).
    private var throttledTotal: UInt64 = 0
    package private(set) var delayedRequests: UInt64 = 0
    /// When the wait in progress began (0: none).
    private var waitingSince: UInt64 = 0

    /// When the limits were last set, and when the first request after that was consumed (0:
    /// none yet): how long a new limit took to take effect, as the daemon saw it.
    package private(set) var configuredAt: UInt64 = 0
    package private(set) var firstConsumptionAfterConfigure: UInt64 = 0

    package init() {}

    /// New limits, effective at `now` with empty buckets (as QEMU's `throttle_config` does): a
    /// debt run up under the old limits is not carried over to the new ones.
    package mutating func configure(_ new: ThrottleLimits, now: UInt64) {
        endWait(now: now)
        limits = new
        isEnabled = new.isLimited
        iopsTotal = LeakyBucket(new[.iopsTotal])
        iopsRead = LeakyBucket(new[.iopsRead])
        iopsWrite = LeakyBucket(new[.iopsWrite])
        bpsTotal = LeakyBucket(new[.bpsTotal])
        bpsRead = LeakyBucket(new[.bpsRead])
        bpsWrite = LeakyBucket(new[.bpsWrite])
        lastLeak = now
        configuredAt = now
        firstConsumptionAfterConfigure = 0
    }

    /// Waits shorter than this are not waited: a timer cannot do better, and a float rounding
    /// must not turn into a wakeup that finds a few nanoseconds still owed.
    static let slackNanos: Double = 1000

    /// Nanoseconds before the next request may be consumed, at `now`: 0 when it may be now.
    @inline(__always)
    package mutating func wait(now: UInt64) -> UInt64 {
        guard isEnabled else { return 0 }
        let elapsed = now > lastLeak ? now - lastLeak : 0
        lastLeak = Swift.max(lastLeak, now)
        iopsTotal.leak(nanoseconds: elapsed)
        iopsRead.leak(nanoseconds: elapsed)
        iopsWrite.leak(nanoseconds: elapsed)
        bpsTotal.leak(nanoseconds: elapsed)
        bpsRead.leak(nanoseconds: elapsed)
        bpsWrite.leak(nanoseconds: elapsed)
        let longest = Swift.max(
            Swift.max(iopsTotal.waitNanos(), iopsRead.waitNanos(), iopsWrite.waitNanos()),
            Swift.max(bpsTotal.waitNanos(), bpsRead.waitNanos(), bpsWrite.waitNanos()))
        return longest < Self.slackNanos ? 0 : UInt64(longest.rounded(.up))
    }

    /// Charges one consumed request: a read, or a write (`write`), of `bytes`. FLUSH, BARRIER
    /// without data, DISCARD and WRITE_ZEROES are not charged (QEMU limits reads and writes only).
    @inline(__always)
    package mutating func charge(write: Bool, bytes: Int, now: UInt64) {
        guard isEnabled else { return }
        if firstConsumptionAfterConfigure == 0 { firstConsumptionAfterConfigure = Swift.max(now, 1) }
        let b = Double(bytes)
        iopsTotal.charge(1)
        bpsTotal.charge(b)
        if write {
            iopsWrite.charge(1)
            bpsWrite.charge(b)
        } else {
            iopsRead.charge(1)
            bpsRead.charge(b)
        }
    }

    // MARK: - Accounting of waits (not per request: once per wait)

    /// A request is waiting for the buckets; the first call of a wait counts it.
    package mutating func beginWait(now: UInt64) {
        guard waitingSince == 0 else { return }
        waitingSince = Swift.max(now, 1)
        delayedRequests &+= 1
    }

    /// The wait ended (the request was let through, the timer fired or the limits changed).
    package mutating func endWait(now: UInt64) {
        guard waitingSince != 0 else { return }
        throttledTotal &+= now > waitingSince ? now - waitingSince : 0
        waitingSince = 0
    }

    /// A request is waiting for the buckets now.
    package var isWaiting: Bool { waitingSince != 0 }

    /// Nanoseconds requests spent waiting so far, the wait in progress included.
    package func throttledNanos(now: UInt64) -> UInt64 {
        throttledTotal &+ (waitingSince != 0 && now > waitingSince ? now - waitingSince : 0)
    }
}
