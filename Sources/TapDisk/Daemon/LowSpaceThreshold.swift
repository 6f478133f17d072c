/// The `--low-space-threshold BYTES|PERCENT` value (docs/protocol.md §7).
///
/// A percentage is kept as a percentage rather than converted at parse time because the
/// filesystem's size is only known once the image is open (and a grown filesystem should move
/// the threshold with it).
package enum LowSpaceThreshold: Equatable, Sendable {
    case bytes(UInt64)
    /// `0 < N <= 100`, of the filesystem's size `f_blocks * f_frsize`.
    case percent(Double)

    /// Parses `BYTES` (the `ByteSize` syntax) or `N%` with `0 < N <= 100` (decimals allowed).
    package static func parse(_ text: String) throws(ByteSize.ParseError) -> LowSpaceThreshold {
        guard text.hasSuffix("%") else { return .bytes(try ByteSize.parse(text)) }
        let number = text.dropLast()
        // Only plain decimal notation: Double("inf"), "nan", "1e2" and hex floats are refused.
        let allowed = number.utf8.allSatisfy {
            ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || $0 == UInt8(ascii: ".")
        }
        guard !number.isEmpty, allowed, number.utf8.filter({ $0 == UInt8(ascii: ".") }).count <= 1,
            let value = Double(number), value.isFinite
        else {
            throw ByteSize.ParseError("invalid percentage '\(text)': expected N% with 0 < N <= 100")
        }
        guard value > 0, value <= 100 else {
            throw ByteSize.ParseError("invalid percentage '\(text)': must be greater than 0 and at most 100")
        }
        return .percent(value)
    }

    /// The threshold in bytes for a filesystem of `filesystemSizeBytes` (`f_blocks * f_frsize`),
    /// rounded down, never above the filesystem size for a percentage.
    package func thresholdBytes(filesystemSizeBytes: UInt64) -> UInt64 {
        switch self {
        case .bytes(let n):
            return n
        case .percent(let p):
            let raw = Double(filesystemSizeBytes) * p / 100
            if raw >= Double(filesystemSizeBytes) { return filesystemSizeBytes }
            return UInt64(raw.rounded(.down))
        }
    }
}
