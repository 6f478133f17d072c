/// Latency histogram with fixed, preallocated buckets: exact below 64 ns, then 64 linear
/// sub-buckets per power of two (relative error under 1.6%). Recording never allocates.
struct LatencyHistogram: ~Copyable {
    static let subBits = 6
    static let bucketCount = 64 * 64
    let counts: UnsafeMutablePointer<UInt64>
    var total: UInt64 = 0
    var sum: UInt64 = 0
    var minimum: UInt64 = .max
    var maximum: UInt64 = 0

    init() {
        counts = .allocate(capacity: Self.bucketCount)
        counts.initialize(repeating: 0, count: Self.bucketCount)
    }

    deinit { counts.deallocate() }

    @inline(__always)
    static func index(_ v: UInt64) -> Int {
        if v < 64 { return Int(v) }
        let e = 63 - v.leadingZeroBitCount
        let sub = Int((v >> UInt64(e - subBits)) & 63)
        return (e - subBits + 1) * 64 + sub
    }

    /// Middle of bucket `i`.
    static func value(_ i: Int) -> Double {
        if i < 64 { return Double(i) }
        let e = i / 64 + subBits - 1
        let sub = i % 64
        let low = Double(64 + sub) * Double(UInt64(1) << UInt64(e - subBits))
        return low + Double(UInt64(1) << UInt64(e - subBits)) / 2
    }

    @inline(__always)
    mutating func record(_ v: UInt64) {
        counts[Self.index(v)] &+= 1
        total &+= 1
        sum &+= v
        if v < minimum { minimum = v }
        if v > maximum { maximum = v }
    }

    mutating func reset() {
        counts.update(repeating: 0, count: Self.bucketCount)
        total = 0
        sum = 0
        minimum = .max
        maximum = 0
    }

    func percentile(_ p: Double) -> Double {
        guard total > 0 else { return 0 }
        let rank = UInt64((p / 100 * Double(total)).rounded(.up))
        var seen: UInt64 = 0
        for i in 0..<Self.bucketCount {
            seen += counts[i]
            if seen >= max(rank, 1) { return min(max(Self.value(i), Double(minimum)), Double(maximum)) }
        }
        return Double(maximum)
    }
}
