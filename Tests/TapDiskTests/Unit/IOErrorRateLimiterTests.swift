import Testing

@testable import TapDisk

/// §7: one `io-error` event per (operation, errno) per fixed one-second window; what was left
/// out is reported with the next event of that kind, and kinds do not share windows.
@Suite struct IOErrorRateLimiterTests {
    let second: UInt64 = 1_000_000_000

    @Test func oneEventPerKindPerWindowWithTheSuppressedCount() {
        var limiter = IOErrorRateLimiter()
        let t0 = 7 * second + 100
        #expect(limiter.admit(operation: "write", errno: 28, nowNanos: t0) == 0)
        for i in 1...5 { #expect(limiter.admit(operation: "write", errno: 28, nowNanos: t0 + UInt64(i) * 1000) == nil) }
        // Same second, other kinds: their own windows.
        #expect(limiter.admit(operation: "write", errno: 5, nowNanos: t0 + 10) == 0)
        #expect(limiter.admit(operation: "read", errno: 28, nowNanos: t0 + 10) == 0)
        #expect(limiter.admit(operation: "read", errno: 28, nowNanos: t0 + 20) == nil)
        // The next window (fixed, not sliding): the first event carries the 5 left out.
        #expect(limiter.admit(operation: "write", errno: 28, nowNanos: 8 * second) == 5)
        #expect(limiter.admit(operation: "write", errno: 28, nowNanos: 8 * second + 1) == nil)
        // A quiet gap of several windows: only what was suppressed since the last event counts.
        #expect(limiter.admit(operation: "write", errno: 28, nowNanos: 20 * second) == 1)
        #expect(limiter.admit(operation: "write", errno: 28, nowNanos: 21 * second) == 0)
        #expect(limiter.admit(operation: "read", errno: 28, nowNanos: 21 * second) == 1)
    }

    @Test func windowsAreFixedSeconds() {
        var limiter = IOErrorRateLimiter()
        // 1 ns apart but across a second boundary: two windows, two events.
        #expect(limiter.admit(operation: "flush", errno: 5, nowNanos: 3 * second - 1) == 0)
        #expect(limiter.admit(operation: "flush", errno: 5, nowNanos: 3 * second) == 0)
    }
}
