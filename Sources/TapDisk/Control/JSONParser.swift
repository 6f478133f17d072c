/// A strict RFC 8259 parser for control datagrams.
///
/// Everything a client sends is hostile, so this accepts exactly the RFC grammar and nothing a
/// lenient parser would guess at: no comments, trailing commas, BOM, `NaN`, leading zeros or
/// invalid UTF-8 (overlong forms, encoded surrogates, values past U+10FFFF, truncated sequences,
/// unpaired `\u` surrogates). A duplicated key is an error because two readers of the same
/// message could otherwise act on different values. Nesting is bounded, so recursion depth is
/// bounded by `maxDepth`, not by the input. Every index is checked before it is read; no input
/// traps or reads out of bounds.
package struct JSONParser {
    package static let defaultMaxDepth = 64

    package struct SyntaxError: Error, Equatable, Sendable, CustomStringConvertible {
        package enum Reason: String, Equatable, Sendable {
            case unexpectedEnd = "unexpected end of input"
            case unexpectedByte = "unexpected character"
            case invalidUTF8 = "invalid UTF-8"
            case controlCharacter = "unescaped control character in string"
            case invalidEscape = "invalid escape sequence"
            case loneSurrogate = "unpaired surrogate escape"
            case invalidNumber = "invalid number"
            case leadingZero = "number with a leading zero"
            case tooDeep = "nesting too deep"
            case duplicateKey = "duplicate object key"
            case trailingData = "data after the JSON value"
        }

        package var reason: Reason
        /// Byte offset into the input, for diagnostics that must not quote the input itself.
        package var offset: Int

        package init(_ reason: Reason, at offset: Int) {
            self.reason = reason
            self.offset = offset
        }

        package var description: String { "\(reason.rawValue) at byte \(offset)" }
    }

    /// The result of `parseReportingDuplicateKeys`.
    package struct Document: Sendable {
        package var value: JSONValue
        /// Offset of the first duplicated key, anywhere in the document.
        package var firstDuplicateKeyOffset: Int?
    }

    private let bytes: UnsafeRawBufferPointer
    private let maxDepth: Int
    private let keepDuplicateKeys: Bool
    private var position = 0
    private var firstDuplicateKeyOffset: Int?

    private init(_ bytes: UnsafeRawBufferPointer, maxDepth: Int, keepDuplicateKeys: Bool) {
        self.bytes = bytes
        self.maxDepth = maxDepth
        self.keepDuplicateKeys = keepDuplicateKeys
    }

    package static func parse(
        _ bytes: UnsafeRawBufferPointer, maxDepth: Int = defaultMaxDepth
    ) throws(SyntaxError) -> JSONValue {
        var parser = JSONParser(bytes, maxDepth: maxDepth, keepDuplicateKeys: false)
        return try parser.parseDocument()
    }

    package static func parse(_ bytes: [UInt8], maxDepth: Int = defaultMaxDepth) throws(SyntaxError)
        -> JSONValue
    {
        let result = bytes.withUnsafeBytes { buffer in
            Result { () throws(SyntaxError) -> JSONValue in try parse(buffer, maxDepth: maxDepth) }
        }
        return try result.get()
    }

    package static func parse(_ text: String, maxDepth: Int = defaultMaxDepth) throws(SyntaxError)
        -> JSONValue
    {
        try parse(Array(text.utf8), maxDepth: maxDepth)
    }

    /// Like `parse`, but a duplicated key is reported instead of thrown, and every member is
    /// kept (lookups find the first). The control layer uses this to tell the client which
    /// request its `bad-request` answers: the tag is still recoverable when some other key is
    /// duplicated. The returned value must not be used for anything else.
    package static func parseReportingDuplicateKeys(
        _ bytes: UnsafeRawBufferPointer, maxDepth: Int = defaultMaxDepth
    ) throws(SyntaxError) -> Document {
        var parser = JSONParser(bytes, maxDepth: maxDepth, keepDuplicateKeys: true)
        let value = try parser.parseDocument()
        return Document(value: value, firstDuplicateKeyOffset: parser.firstDuplicateKeyOffset)
    }

    // MARK: - Grammar

    private mutating func parseDocument() throws(SyntaxError) -> JSONValue {
        skipWhitespace()
        let value = try parseValue(depth: 0)
        skipWhitespace()
        guard position == bytes.count else { throw SyntaxError(.trailingData, at: position) }
        return value
    }

    /// `depth` is the number of containers enclosing this value.
    private mutating func parseValue(depth: Int) throws(SyntaxError) -> JSONValue {
        guard position < bytes.count else { throw SyntaxError(.unexpectedEnd, at: position) }
        switch bytes[position] {
        case UInt8(ascii: "{"):
            return try parseObject(depth: depth + 1)
        case UInt8(ascii: "["):
            return try parseArray(depth: depth + 1)
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"):
            try expectLiteral("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expectLiteral("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expectLiteral("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return .number(try parseNumber())
        default:
            throw SyntaxError(.unexpectedByte, at: position)
        }
    }

    private mutating func parseObject(depth: Int) throws(SyntaxError) -> JSONValue {
        guard depth <= maxDepth else { throw SyntaxError(.tooDeep, at: position) }
        position += 1  // "{"
        var object = JSONObject()
        // Beyond a few keys, duplicate checks switch from scanning to hashing, so a 64 KiB
        // object of tiny keys stays linear.
        var seen = Set<KeyBytes>()
        skipWhitespace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "}") {
            position += 1
            return .object(object)
        }
        while true {
            skipWhitespace()
            guard position < bytes.count else { throw SyntaxError(.unexpectedEnd, at: position) }
            guard bytes[position] == UInt8(ascii: "\"") else {
                throw SyntaxError(.unexpectedByte, at: position)
            }
            let keyOffset = position
            let key = try parseString()
            let duplicate: Bool
            if object.count < 16 {
                duplicate = object.contains(key: key)
            } else {
                if seen.isEmpty {
                    for member in object.members { seen.insert(KeyBytes(member.key)) }
                }
                duplicate = !seen.insert(KeyBytes(key)).inserted
            }
            if duplicate {
                guard keepDuplicateKeys else { throw SyntaxError(.duplicateKey, at: keyOffset) }
                if firstDuplicateKeyOffset == nil { firstDuplicateKeyOffset = keyOffset }
            }
            skipWhitespace()
            guard position < bytes.count else { throw SyntaxError(.unexpectedEnd, at: position) }
            guard bytes[position] == UInt8(ascii: ":") else {
                throw SyntaxError(.unexpectedByte, at: position)
            }
            position += 1
            skipWhitespace()
            let value = try parseValue(depth: depth)
            object.appendUnchecked(key, value)
            skipWhitespace()
            guard position < bytes.count else { throw SyntaxError(.unexpectedEnd, at: position) }
            switch bytes[position] {
            case UInt8(ascii: ","):
                position += 1
            case UInt8(ascii: "}"):
                position += 1
                return .object(object)
            default:
                throw SyntaxError(.unexpectedByte, at: position)
            }
        }
    }

    private mutating func parseArray(depth: Int) throws(SyntaxError) -> JSONValue {
        guard depth <= maxDepth else { throw SyntaxError(.tooDeep, at: position) }
        position += 1  // "["
        var elements: [JSONValue] = []
        skipWhitespace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "]") {
            position += 1
            return .array(elements)
        }
        while true {
            skipWhitespace()
            elements.append(try parseValue(depth: depth))
            skipWhitespace()
            guard position < bytes.count else { throw SyntaxError(.unexpectedEnd, at: position) }
            switch bytes[position] {
            case UInt8(ascii: ","):
                position += 1
            case UInt8(ascii: "]"):
                position += 1
                return .array(elements)
            default:
                throw SyntaxError(.unexpectedByte, at: position)
            }
        }
    }

    /// Called at the opening quote; leaves `position` after the closing quote.
    private mutating func parseString() throws(SyntaxError) -> String {
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
    private mutating func skipUTF8Sequence() throws(SyntaxError) {
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
    private mutating func parseEscape(into buffer: inout [UInt8]) throws(SyntaxError) {
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

    private mutating func parseHex4() throws(SyntaxError) -> UInt32 {
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
    private static func appendUTF8(_ scalar: UInt32, to buffer: inout [UInt8]) {
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

    private mutating func parseNumber() throws(SyntaxError) -> JSONNumber {
        let start = position
        if bytes[position] == UInt8(ascii: "-") { position += 1 }
        guard position < bytes.count, isDigit(bytes[position]) else {
            throw SyntaxError(.invalidNumber, at: start)
        }
        if bytes[position] == UInt8(ascii: "0") {
            position += 1
            if position < bytes.count, isDigit(bytes[position]) { throw SyntaxError(.leadingZero, at: start) }
        } else {
            skipDigits()
        }
        if position < bytes.count, bytes[position] == UInt8(ascii: ".") {
            position += 1
            guard position < bytes.count, isDigit(bytes[position]) else {
                throw SyntaxError(.invalidNumber, at: start)
            }
            skipDigits()
        }
        if position < bytes.count, bytes[position] | 0x20 == UInt8(ascii: "e") {
            position += 1
            if position < bytes.count,
                bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-")
            {
                position += 1
            }
            guard position < bytes.count, isDigit(bytes[position]) else {
                throw SyntaxError(.invalidNumber, at: start)
            }
            skipDigits()
        }
        let token = String(
            decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
        return JSONNumber(validatedToken: token)
    }

    private func isDigit(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }

    private mutating func skipDigits() {
        while position < bytes.count, isDigit(bytes[position]) { position += 1 }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws(SyntaxError) {
        let text = literal.utf8Start
        for index in 0..<literal.utf8CodeUnitCount {
            guard position < bytes.count else { throw SyntaxError(.unexpectedEnd, at: position) }
            guard bytes[position] == text[index] else { throw SyntaxError(.unexpectedByte, at: position) }
            position += 1
        }
    }

    /// RFC 8259 whitespace only: space, tab, line feed, carriage return.
    private mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x09, 0x0A, 0x0D: position += 1
            default: return
            }
        }
    }
}

/// A key hashed and compared by its UTF-8 bytes, matching `JSONObject`'s key identity.
private struct KeyBytes: Hashable {
    let key: String

    init(_ key: String) {
        self.key = key
    }

    static func == (lhs: KeyBytes, rhs: KeyBytes) -> Bool {
        JSONObject.keysEqual(lhs.key, rhs.key)
    }

    func hash(into hasher: inout Hasher) {
        for byte in key.utf8 { hasher.combine(byte) }
    }
}
