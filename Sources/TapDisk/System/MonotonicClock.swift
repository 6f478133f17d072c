import Glibc

/// CLOCK_MONOTONIC in nanoseconds: pause timeouts and rate-limit windows must not jump with the
/// wall clock.
package enum MonotonicClock {
    package static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
