/// One limited quantity's bucket, with QEMU's arithmetic (util/throttle.c: `throttle_leak_bucket`,
/// `throttle_compute_wait`, `throttle_account`) so that a limit means here what it means there.
///
/// Each consumed request pours its cost (1 for an IOPS bucket, its bytes for a BPS bucket) into
/// `level`, which leaks at `average` units per second. Consumption waits while the level is
/// above the bucket's size: a tenth of a second at `average` without a burst limit (short
/// bursts pass, so a guest at the limit is not throttled on every other request), or
/// `burst × burstSeconds` with one, in which case `burstLevel`, leaking at `burst`, also keeps
/// the burst itself to `burst` per second (its size is a tenth of a second at `burst`).
///
/// The cost is added after the request was let through, so the level may go above the size
/// (a debt); the next request then waits until it has leaked back. That is how the engine can
/// decide before it has read the request: no peeking at its size.
struct LeakyBucket: Sendable {
    var average: Double = 0
    var burst: Double = 0
    var burstSeconds: Double = 1
    var level: Double = 0
    var burstLevel: Double = 0

    init() {}

    init(_ limit: ThrottleLimits.Limit) {
        average = Double(limit.average)
        burst = Double(limit.burst)
        burstSeconds = Double(limit.burstSeconds)
    }

    /// Lets `nanoseconds` of leaking happen (never below empty).
    @inline(__always)
    mutating func leak(nanoseconds: UInt64) {
        guard average > 0 else { return }
        let seconds = Double(nanoseconds) / 1e9
        level = Swift.max(level - average * seconds, 0)
        if burstSeconds > 1 { burstLevel = Swift.max(burstLevel - burst * seconds, 0) }
    }

    /// Nanoseconds until the level is back within the bucket's size (0: now).
    @inline(__always)
    func waitNanos() -> Double {
        guard average > 0 else { return 0 }
        let size = burst > 0 ? burst * burstSeconds : average / 10
        let extra = level - size
        if extra > 0 { return extra * 1e9 / average }
        if burstSeconds > 1 {
            let burstExtra = burstLevel - burst / 10
            if burstExtra > 0 { return burstExtra * 1e9 / burst }
        }
        return 0
    }

    @inline(__always)
    mutating func charge(_ units: Double) {
        guard average > 0 else { return }
        level += units
        if burstSeconds > 1 { burstLevel += units }
    }
}
