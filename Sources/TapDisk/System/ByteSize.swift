/// Byte counts as the command line writes them: `--size` for `create` and the bytes form of
/// `--low-space-threshold` (docs/protocol.md §7).
///
/// The syntax is deliberately small and strict, an unsigned decimal integer with an optional
/// `K`/`M`/`G`/`T` suffix in powers of 1024, because a typo in a disk size must fail loudly
/// rather than silently create a disk a thousand times too small or wrap around on overflow.
package enum ByteSize {
    /// Why a size string was refused; the message is meant for the operator's terminal.
    package struct ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        package var message: String
        package init(_ message: String) { self.message = message }
        package var description: String { message }
    }

    /// Parses `N`, `NK`, `NM`, `NG` or `NT` (suffix case-insensitive, powers of 1024). Signs,
    /// spaces, fractions and `B`/`iB` spellings are refused so there is exactly one way to write a
    /// size.
    package static func parse(_ text: String) throws(ParseError) -> UInt64 {
        var digits = Substring(text)
        guard !digits.isEmpty else { throw ParseError("empty size") }
        var multiplier: UInt64 = 1
        if let last = digits.last, !last.isASCII || !last.isNumber {
            switch last {
            case "k", "K": multiplier = 1 << 10
            case "m", "M": multiplier = 1 << 20
            case "g", "G": multiplier = 1 << 30
            case "t", "T": multiplier = 1 << 40
            default:
                throw ParseError("invalid size '\(text)': expected an integer with an optional K/M/G/T suffix")
            }
            digits = digits.dropLast()
        }
        guard !digits.isEmpty else { throw ParseError("invalid size '\(text)': missing number") }
        var value: UInt64 = 0
        for ch in digits.utf8 {
            guard ch >= UInt8(ascii: "0"), ch <= UInt8(ascii: "9") else {
                if ch == UInt8(ascii: "-") { throw ParseError("invalid size '\(text)': must not be negative") }
                throw ParseError("invalid size '\(text)': expected an integer with an optional K/M/G/T suffix")
            }
            let (times10, o1) = value.multipliedReportingOverflow(by: 10)
            let (next, o2) = times10.addingReportingOverflow(UInt64(ch - UInt8(ascii: "0")))
            if o1 || o2 { throw ParseError("invalid size '\(text)': too large") }
            value = next
        }
        let (result, overflow) = value.multipliedReportingOverflow(by: multiplier)
        if overflow { throw ParseError("invalid size '\(text)': too large") }
        return result
    }
}
