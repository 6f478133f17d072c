/// One latency histogram per operation, from the moment a request is consumed from the front to
/// the moment its answer is written (held and BARRIER-waiting time included: the guest waited
/// for it), for `stats` and through it a Prometheus exporter.
///
/// The buckets are fixed, so histograms of different disks and daemons add up: upper bounds
/// (inclusive, as Prometheus' `le`) 1, 2 and 5 per decade from 1 µs to 10 s, and one more
/// bucket for everything above 10 s. Recording is three increments into memory allocated once
/// per engine: no allocation, lock, ARC or syscall on the request path. The bucket is found in
/// constant time: below every power of two lies at most one bound (consecutive bounds are at
/// least 2x apart), so `floor(log2(ns))` names a candidate and one comparison settles it.
package struct LatencyHistograms: ~Copyable {
    /// The operations with a histogram, in the order `stats` lists them. WRITE_ZEROES counts as
    /// `discard` (as in `discard-requests`); GET_ID and rejected requests are not recorded.
    package enum Operation: Int, CaseIterable, Sendable {
        case read, write, flush, barrier, discard

        @inline(__always)
        init(_ operation: DiskOperation) {
            switch operation {
            case .read: self = .read
            case .write: self = .write
            case .flush: self = .flush
            case .barrier: self = .barrier
            case .discard, .writeZeroes: self = .discard
            }
        }

        package var name: String {
            switch self {
            case .read: "read"
            case .write: "write"
            case .flush: "flush"
            case .barrier: "barrier"
            case .discard: "discard"
            }
        }
    }

    /// The finite upper bounds in nanoseconds, 1 µs ... 10 s (22 of them); `bucketCount` has
    /// one more bucket, above the last bound.
    package static let boundsNanos: [UInt64] = {
        var bounds: [UInt64] = []
        var decade: UInt64 = 1000
        while decade < 10_000_000_000 {
            bounds += [decade, decade * 2, decade * 5]
            decade *= 10
        }
        return bounds + [decade]
    }()
    package static let bucketCount = 23

    /// Per operation: `bucketCount` counts, then the sum of nanoseconds.
    private static let stride = bucketCount + 1
    private let cells: UnsafeMutablePointer<UInt64>
    /// `boundsNanos` and `UInt64.max` (the overflow bucket's bound).
    private let bounds: UnsafeMutablePointer<UInt64>
    /// For each `floor(log2(ns))`, the first bucket whose bound is at least `2^log2`.
    private let candidates: UnsafeMutablePointer<UInt8>

    package init() {
        let cellCount = Operation.allCases.count * Self.stride
        cells = .allocate(capacity: cellCount)
        cells.initialize(repeating: 0, count: cellCount)
        bounds = .allocate(capacity: Self.bucketCount)
        for (i, b) in (Self.boundsNanos + [UInt64.max]).enumerated() { bounds[i] = b }
        candidates = .allocate(capacity: 64)
        for log2 in 0..<64 {
            let low = UInt64(1) << UInt64(log2)
            var i = 0
            while bounds[i] < low { i += 1 }
            candidates[log2] = UInt8(i)
        }
    }

    deinit {
        cells.deallocate()
        bounds.deallocate()
        candidates.deallocate()
    }

    /// The bucket of a latency: the first whose bound is at least `nanoseconds`.
    @inline(__always)
    package func bucket(nanoseconds: UInt64) -> Int {
        // `| 1`: 0 has no logarithm, and lands where 1 does (bucket 0) either way.
        let v = nanoseconds | 1
        let candidate = Int(candidates[63 &- v.leadingZeroBitCount])
        return candidate &+ (nanoseconds > bounds[candidate] ? 1 : 0)
    }

    @inline(__always)
    func record(_ operation: Operation, nanoseconds: UInt64) {
        let base = cells + operation.rawValue &* Self.stride
        base[bucket(nanoseconds: nanoseconds)] &+= 1
        base[Self.bucketCount] &+= nanoseconds
    }

    /// A copy of one operation's histogram (the control path: this allocates).
    package func snapshot(_ operation: Operation) -> LatencySnapshot {
        let base = cells + operation.rawValue * Self.stride
        return LatencySnapshot(
            buckets: Array(UnsafeBufferPointer(start: base, count: Self.bucketCount)),
            sumNanos: base[Self.bucketCount])
    }
}
