/// One operation's latency histogram at one moment, as `stats` reports it: per-bucket counts
/// (not cumulative; bounds in `LatencyHistograms.boundsNanos`, the last bucket above 10 s) and
/// the sum of the recorded nanoseconds.
package struct LatencySnapshot: Sendable, Equatable {
    package var buckets: [UInt64]
    package var sumNanos: UInt64

    package init(buckets: [UInt64], sumNanos: UInt64) {
        self.buckets = buckets
        self.sumNanos = sumNanos
    }

    /// Requests recorded (Prometheus' `_count`).
    package var count: UInt64 { buckets.reduce(0, &+) }

    /// The upper bound (ns) of the bucket holding quantile `q` (0...1), nil when empty or when
    /// it lies in the overflow bucket: "p99 ≤ this", to the resolution of the buckets.
    package func upperBound(quantile q: Double) -> UInt64? {
        let total = count
        guard total > 0 else { return nil }
        let rank = max(1, UInt64((Double(total) * q).rounded(.up)))
        var seen: UInt64 = 0
        for (i, c) in buckets.enumerated() {
            seen += c
            if seen >= rank { return i < LatencyHistograms.boundsNanos.count ? LatencyHistograms.boundsNanos[i] : nil }
        }
        return nil
    }
}
