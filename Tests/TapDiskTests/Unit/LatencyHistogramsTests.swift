import Testing

@testable import TapDisk

/// The bucket function against its definition (the first bucket whose bound is at least the
/// value), at every bound, either side of it, at 0, at every power of two and at the top.
@Suite struct LatencyHistogramsTests {
    /// The definition, by linear search.
    func expectedBucket(_ ns: UInt64) -> Int {
        LatencyHistograms.boundsNanos.firstIndex { ns <= $0 } ?? LatencyHistograms.boundsNanos.count
    }

    @Test func boundsAreOneTwoFivePerDecadeFromOneMicrosecondToTenSeconds() {
        let b = LatencyHistograms.boundsNanos
        #expect(b.count == 22 && LatencyHistograms.bucketCount == b.count + 1)
        #expect(b.first == 1_000 && b.last == 10_000_000_000)
        #expect(Array(b.prefix(6)) == [1_000, 2_000, 5_000, 10_000, 20_000, 50_000])
        // The constant-time lookup relies on consecutive bounds at least 2x apart.
        for i in 1..<b.count { #expect(b[i] >= 2 * b[i - 1]) }
    }

    @Test func bucketMatchesTheDefinitionEverywhere() {
        let h = LatencyHistograms()
        var values: [UInt64] = [0, 1, 999, .max, .max - 1, 10_000_000_000 + 1]
        for b in LatencyHistograms.boundsNanos { values += [b - 1, b, b + 1] }
        for shift in 0..<64 {
            let p = UInt64(1) << UInt64(shift)
            values += [p - 1, p, p + 1]
        }
        var rng = SplitMix(seed: 17)
        for _ in 0..<10_000 { values.append(rng.next() >> (rng.next() % 64)) }
        for v in values {
            #expect(h.bucket(nanoseconds: v) == expectedBucket(v), "\(v) ns")
        }
        #expect(h.bucket(nanoseconds: 0) == 0)
        #expect(h.bucket(nanoseconds: 1_000) == 0 && h.bucket(nanoseconds: 1_001) == 1)
        #expect(h.bucket(nanoseconds: 10_000_000_000) == 21)
        #expect(h.bucket(nanoseconds: 10_000_000_001) == 22 && h.bucket(nanoseconds: .max) == 22)
    }

    @Test func recordKeepsOperationsApartAndSums() {
        let h = LatencyHistograms()
        h.record(.read, nanoseconds: 500)
        h.record(.read, nanoseconds: 3_000)
        h.record(.read, nanoseconds: 20_000_000_000)
        h.record(.discard, nanoseconds: 0)
        let read = h.snapshot(.read)
        #expect(read.count == 3 && read.sumNanos == 20_000_003_500)
        #expect(read.buckets[0] == 1 && read.buckets[2] == 1 && read.buckets[22] == 1)
        #expect(h.snapshot(.discard).count == 1 && h.snapshot(.discard).buckets[0] == 1)
        #expect(h.snapshot(.write).count == 0 && h.snapshot(.flush).count == 0 && h.snapshot(.barrier).count == 0)
        #expect(LatencyHistograms.Operation(.writeZeroes) == .discard)
    }

    @Test func quantileIsTheBoundOfItsBucket() {
        var buckets = [UInt64](repeating: 0, count: LatencyHistograms.bucketCount)
        #expect(LatencySnapshot(buckets: buckets, sumNanos: 0).upperBound(quantile: 0.5) == nil)
        buckets[3] = 98  // ≤ 10 µs
        buckets[9] = 1  // ≤ 1 ms
        buckets[22] = 1  // > 10 s
        let s = LatencySnapshot(buckets: buckets, sumNanos: 0)
        #expect(s.upperBound(quantile: 0.5) == 10_000)
        #expect(s.upperBound(quantile: 0.98) == 10_000)
        #expect(s.upperBound(quantile: 0.99) == 1_000_000)
        #expect(s.upperBound(quantile: 1) == nil)
    }
}
