/// Failed I/O attempts by errno, for `stats`' `errors-by-errno`: the same attempts as the
/// `*-errors` counters, told apart by what the kernel answered.
///
/// A fixed table allocated once with the counters, so counting is an increment on the error
/// path and nothing at all on the path of a request that succeeds.
package struct ErrnoCounts: Sendable, Equatable {
    /// Linux errno values are 1...133; anything else is counted in the last slot.
    private static let slots = 135
    private var counts = [UInt64](repeating: 0, count: slots)

    package init() {}

    private static func slot(_ e: Errno) -> Int {
        e.rawValue > 0 && e.rawValue < Int32(slots - 1) ? Int(e.rawValue) : slots - 1
    }

    package subscript(_ e: Errno) -> UInt64 {
        get { counts[Self.slot(e)] }
        set { counts[Self.slot(e)] = newValue }
    }

    /// The errnos seen, by name (`EIO`, `ENOSPC`, …; `E<n>` for one without a name here,
    /// `other` for a value outside 1...133), in errno order.
    package var named: [(String, UInt64)] {
        var result: [(String, UInt64)] = []
        for i in 1..<(Self.slots - 1) where counts[i] > 0 { result.append((Errno(rawValue: Int32(i)).name, counts[i])) }
        if counts[Self.slots - 1] > 0 { result.append(("other", counts[Self.slots - 1])) }
        return result
    }
}
