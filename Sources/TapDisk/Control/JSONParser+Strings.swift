/// Strings: UTF-8 validated byte by byte (overlongs, surrogates and code points past U+10FFFF
/// refused), escapes decoded, and raw control characters refused, as RFC 8259 requires.
extension JSONParser {
    /// Called at the opening quote; leaves `position` after the closing quote.
    mutating func parseString() throws(SyntaxError) -> String {
        position += 1
        let start = position
        // Fast path: no escapes, so the validated bytes become the string directly.
        while position < bytes.count {
            let byte = bytes[position]
            if byte == UInt8(ascii: "\"") {
                let text = String(
                    decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
                position += 1
                return text
            }
            if byte == UInt8(ascii: "\\") { break }
            if byte < 0x20 { throw SyntaxError(.controlCharacter, at: position) }
            if byte < 0x80 {
                position += 1
            } else {
                try skipUTF8Sequence()
            }
        }
        guard position < bytes.count else { throw SyntaxError(.unexpectedEnd, at: position) }

        var buffer: [UInt8] = []
        buffer.reserveCapacity(position - start + 16)
        buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<position]))
        while position < bytes.count {
            let byte = bytes[position]
            switch byte {
            case UInt8(ascii: "\""):
                position += 1
                return String(decoding: buffer, as: UTF8.self)
            case UInt8(ascii: "\\"):
                try parseEscape(into: &buffer)
            case 0..<0x20:
                throw SyntaxError(.controlCharacter, at: position)
            case 0x20..<0x80:
                buffer.append(byte)
                position += 1
            default:
                let sequenceStart = position
                try skipUTF8Sequence()
                buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[sequenceStart..<position]))
            }
        }
        throw SyntaxError(.unexpectedEnd, at: position)
    }

    /// Validates one multi-byte sequence per Unicode Table 3-7 (well-formed UTF-8), which rules
    /// out overlong forms, surrogates and code points past U+10FFFF by the allowed byte ranges.
    mutating func skipUTF8Sequence() throws(SyntaxError) {
        let lead = bytes[position]
        let length: Int
        var secondLow: UInt8 = 0x80
        var secondHigh: UInt8 = 0xBF
        switch lead {
        case 0xC2...0xDF:
            length = 2
        case 0xE0:
            length = 3
            secondLow = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF:
            length = 3
        case 0xED:
            length = 3
            secondHigh = 0x9F
        case 0xF0:
            length = 4
            secondLow = 0x90
        case 0xF1...0xF3:
            length = 4
        case 0xF4:
            length = 4
            secondHigh = 0x8F
        default:
            throw SyntaxError(.invalidUTF8, at: position)
        }
        guard bytes.count - position >= length else { throw SyntaxError(.invalidUTF8, at: position) }
        let second = bytes[position + 1]
        guard second >= secondLow, second <= secondHigh else {
            throw SyntaxError(.invalidUTF8, at: position)
        }
        var index = 2
        while index < length {
            guard bytes[position + index] & 0xC0 == 0x80 else {
                throw SyntaxError(.invalidUTF8, at: position)
            }
            index += 1
        }
        position += length
    }

    /// Called at the backslash.
    mutating func parseEscape(into buffer: inout [UInt8]) throws(SyntaxError) {
        let escapeOffset = position
        position += 1
        guard position < bytes.count else { throw SyntaxError(.unexpectedEnd, at: position) }
        let letter = bytes[position]
        position += 1
        switch letter {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"):
            buffer.append(letter)
        case UInt8(ascii: "b"): buffer.append(0x08)
        case UInt8(ascii: "f"): buffer.append(0x0C)
        case UInt8(ascii: "n"): buffer.append(0x0A)
        case UInt8(ascii: "r"): buffer.append(0x0D)
        case UInt8(ascii: "t"): buffer.append(0x09)
        case UInt8(ascii: "u"):
            let first = try parseHex4()
            let scalar: UInt32
            switch first {
            case 0xD800...0xDBFF:
                guard bytes.count - position >= 2,
                    bytes[position] == UInt8(ascii: "\\"),
                    bytes[position + 1] == UInt8(ascii: "u")
                else { throw SyntaxError(.loneSurrogate, at: escapeOffset) }
                position += 2
                let second = try parseHex4()
                guard (0xDC00...0xDFFF).contains(second) else {
                    throw SyntaxError(.loneSurrogate, at: escapeOffset)
                }
                scalar = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            case 0xDC00...0xDFFF:
                throw SyntaxError(.loneSurrogate, at: escapeOffset)
            default:
                scalar = first
            }
            JSONParser.appendUTF8(scalar, to: &buffer)
        default:
            throw SyntaxError(.invalidEscape, at: escapeOffset)
        }
    }

    mutating func parseHex4() throws(SyntaxError) -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard position < bytes.count else { throw SyntaxError(.unexpectedEnd, at: position) }
            let byte = bytes[position]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw SyntaxError(.invalidEscape, at: position)
            }
            value = value << 4 | UInt32(digit)
            position += 1
        }
        return value
    }

    /// `scalar` is a valid scalar value: surrogates were combined or rejected by the caller.
    static func appendUTF8(_ scalar: UInt32, to buffer: inout [UInt8]) {
        switch scalar {
        case 0..<0x80:
            buffer.append(UInt8(scalar))
        case 0x80..<0x800:
            buffer.append(0xC0 | UInt8(scalar >> 6))
            buffer.append(0x80 | UInt8(scalar & 0x3F))
        case 0x800..<0x10000:
            buffer.append(0xE0 | UInt8(scalar >> 12))
            buffer.append(0x80 | UInt8((scalar >> 6) & 0x3F))
            buffer.append(0x80 | UInt8(scalar & 0x3F))
        default:
            buffer.append(0xF0 | UInt8(scalar >> 18))
            buffer.append(0x80 | UInt8((scalar >> 12) & 0x3F))
            buffer.append(0x80 | UInt8((scalar >> 6) & 0x3F))
            buffer.append(0x80 | UInt8(scalar & 0x3F))
        }
    }
}
