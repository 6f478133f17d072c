/// A JSON number, held as the exact token text it arrived as (or was generated as).
///
/// Tags must be echoed "with the same JSON type and value (integers exactly, whatever their size)"
/// and `u64` fields must never pass through `Double`. Keeping the token text makes echoing
/// byte-for-byte trivial (`-0`, `1.50` and 30-digit integers come back unchanged) and leaves each
/// conversion to be done exactly, on demand, by whoever knows which type the field has.
///
/// Equality is textual: `1.0` and `1` are different tokens, and the protocol distinguishes them
/// (only the second is an integer).
package struct JSONNumber: Hashable, Sendable, CustomStringConvertible {
    /// The token; always matches the RFC 8259 `number` grammar.
    package let text: String

    /// For tokens the parser has already validated.
    init(validatedToken text: String) {
        self.text = text
    }

    /// Validates `text` as a complete JSON number token (no surrounding whitespace).
    package init?(_ text: String) {
        guard let value = try? JSONParser.parse(Array(text.utf8)),
            case .number(let number) = value,
            number.text.utf8.count == text.utf8.count
        else { return nil }
        self.text = number.text
    }

    package init(_ value: Int64) {
        text = String(value)
    }

    package init(_ value: UInt64) {
        text = String(value)
    }

    /// Any fixed-width or arbitrary integer: its decimal text is exact whatever the width.
    package init<T: BinaryInteger>(integer value: T) {
        text = String(value)
    }

    /// nil for NaN and infinities, which JSON cannot represent.
    package init?(_ value: Double) {
        guard value.isFinite else { return nil }
        // Swift's shortest round-trip form ("1e-05", "1e+16", "-0.0", "0.1") is valid JSON.
        let candidate = value.description
        assert(JSONNumber(candidate) != nil, "Double.description produced a non-JSON token")
        text = candidate
    }

    package var description: String { text }

    /// True when the token has neither a fraction nor an exponent: the only tokens integer fields
    /// accept (`1.0` and `1e2` are rejected even though their values are integral).
    package var isInteger: Bool {
        for byte in text.utf8
        where byte == UInt8(ascii: ".") || byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E") {
            return false
        }
        return true
    }

    /// True for a leading minus sign, including `-0`.
    package var isNegative: Bool { text.utf8.first == UInt8(ascii: "-") }

    /// The exact value of an integer token when it fits; nil for non-integer tokens and for
    /// integers outside `Int64` (never rounded through `Double`).
    package var int64: Int64? {
        guard isInteger, let magnitude = integerMagnitude else { return nil }
        if isNegative {
            if magnitude == UInt64(Int64.max) + 1 { return Int64.min }
            return magnitude <= UInt64(Int64.max) ? -Int64(magnitude) : nil
        }
        return magnitude <= UInt64(Int64.max) ? Int64(magnitude) : nil
    }

    /// The exact value of a non-negative integer token when it fits (`-0` is 0); nil otherwise.
    package var uint64: UInt64? {
        guard isInteger, let magnitude = integerMagnitude else { return nil }
        if isNegative { return magnitude == 0 ? 0 : nil }
        return magnitude
    }

    /// The nearest `Double`; meant for non-integer tokens. Overflow gives ±infinity, underflow 0.
    package var double: Double {
        // The token grammar is a subset of what the C-locale `strtod` behind this initializer
        // accepts, so it cannot fail; the fallback only keeps this total.
        Double(text) ?? .nan
    }

    /// Whether the number can be carried without loss of meaning: integer tokens always are
    /// (they are only ever read exactly, never as a `Double`); other tokens when their `Double`
    /// reading is finite (`1e999` is not). This is the protocol's "non-finite tag" test.
    package var isFinite: Bool { isInteger || double.isFinite }

    /// The decimal magnitude of an integer token, nil on 64-bit overflow. Grammar guarantees no
    /// leading zeros, so an oversized token overflows within 20 digits and the loop stops early.
    private var integerMagnitude: UInt64? {
        var magnitude: UInt64 = 0
        for byte in text.utf8 where byte != UInt8(ascii: "-") {
            let (shifted, overflow1) = magnitude.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = shifted.addingReportingOverflow(UInt64(byte &- UInt8(ascii: "0")))
            if overflow1 || overflow2 { return nil }
            magnitude = sum
        }
        return magnitude
    }
}
