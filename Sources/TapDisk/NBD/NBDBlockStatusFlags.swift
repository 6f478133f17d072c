/// The status flags of a `base:allocation` extent.
package struct NBDBlockStatusFlags: OptionSet, Hashable, Sendable {
    package var rawValue: UInt32
    package init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Not allocated in the image: a write there may need space (and fail with `NBD_ENOSPC`).
    package static let hole = Self(rawValue: 1 << 0)
    /// Reads as zeroes.
    package static let zero = Self(rawValue: 1 << 1)
    /// `HOLE|ZERO`, without an array literal (which allocates in debug builds).
    package static let unallocated = Self(rawValue: 3)
    package static let allocated = Self(rawValue: 0)
}
