/// One `io-error` event per `(operation, errno)` per fixed one-second window (§7); what was
/// left out is counted and reported with the next event of that kind.
struct IOErrorRateLimiter {
    private struct Key: Hashable {
        var operation: String
        var errno: Int32
    }

    private struct Window {
        var second: UInt64
        var suppressed: UInt64
    }

    private var windows: [Key: Window] = [:]

    /// nil: suppress this one. Otherwise emit it, with the count suppressed since the last one.
    mutating func admit(operation: String, errno: Int32, nowNanos: UInt64) -> UInt64? {
        let key = Key(operation: operation, errno: errno)
        let second = nowNanos / 1_000_000_000
        if var w = windows[key], w.second == second {
            w.suppressed += 1
            windows[key] = w
            return nil
        }
        let suppressed = windows[key]?.suppressed ?? 0
        windows[key] = Window(second: second, suppressed: 0)
        return suppressed
    }
}
