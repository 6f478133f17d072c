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

    let bytes: UnsafeRawBufferPointer
    let maxDepth: Int
    let keepDuplicateKeys: Bool
    var position = 0
    var firstDuplicateKeyOffset: Int?

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

    func isDigit(_ byte: UInt8) -> Bool {
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
    mutating func skipWhitespace() {
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
