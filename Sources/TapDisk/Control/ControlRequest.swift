/// One control request, parsed from one datagram under the rules of docs/protocol.md §2.
///
/// Parsing checks only what every command shares (a JSON object, a string `cmd`, an optional
/// scalar `tag`, no duplicate keys); each command handler then reads its own arguments through
/// the typed accessors, which apply the protocol's integer rules uniformly: a non-integer token
/// is `bad-request`, an integer out of range is `invalid-argument`.
package struct ControlRequest: Sendable {
    /// Datagrams (requests, replies and events) are at most this size, inclusive.
    package static let maxDatagramSize = 65536

    /// The largest tag, as serialized, that is echoed. A tag is echoed in every reply, and replies
    /// obey the datagram limit too; capping the tag at 48 KiB leaves room for the largest reply
    /// body. The protocol says integers echo "whatever their size", and any tag that fits here
    /// does; a larger one cannot be echoed in a reply of legal size, so it is a bad tag.
    package static let maxTagSize = 49152

    /// What went wrong, with the request's tag when it could be recovered, so the error reply
    /// still matches the request it answers.
    package struct TaggedError: Error, Equatable, Sendable {
        package var error: ControlError
        /// nil when the request had no tag, or the tag itself was the problem, or the datagram
        /// was not a JSON object at all.
        package var tag: JSONValue?

        package init(_ error: ControlError, tag: JSONValue?) {
            self.error = error
            self.tag = tag
        }
    }

    package let command: String
    /// Absent (nil) and JSON null (`.null`) are different: only a present tag is echoed.
    package let tag: JSONValue?
    /// The whole request object, `cmd` and `tag` included; unknown keys are ignored by handlers.
    package let arguments: JSONObject

    package init(command: String, tag: JSONValue? = nil, arguments: JSONObject = JSONObject()) {
        self.command = command
        self.tag = tag
        self.arguments = arguments
    }

    package static func parse(_ bytes: [UInt8]) -> Result<ControlRequest, TaggedError> {
        bytes.withUnsafeBytes { parse($0) }
    }

    package static func parse(_ bytes: UnsafeRawBufferPointer) -> Result<ControlRequest, TaggedError> {
        if bytes.isEmpty {
            return .failure(TaggedError(.badRequest("empty datagram"), tag: nil))
        }
        if bytes.count > maxDatagramSize {
            return .failure(
                TaggedError(.badRequest("datagram larger than \(maxDatagramSize) bytes"), tag: nil))
        }
        let document: JSONParser.Document
        do {
            document = try JSONParser.parseReportingDuplicateKeys(bytes)
        } catch {
            return .failure(TaggedError(.badRequest("not valid JSON: \(error)"), tag: nil))
        }
        guard case .object(let object) = document.value else {
            return .failure(TaggedError(.badRequest("not a JSON object"), tag: nil))
        }

        // The tag first, so that every later failure can be answered with it.
        var tag: JSONValue?
        switch object.occurrences(ofKey: "tag") {
        case 0:
            tag = nil
        case 1:
            let candidate = object["tag"] ?? .null
            if let problem = tagProblem(candidate) {
                return .failure(TaggedError(.badRequest(problem), tag: nil))
            }
            tag = candidate
        default:
            return .failure(TaggedError(.badRequest("duplicate key \"tag\""), tag: nil))
        }

        if let offset = document.firstDuplicateKeyOffset {
            return .failure(TaggedError(.badRequest("duplicate object key at byte \(offset)"), tag: tag))
        }
        guard let commandValue = object["cmd"] else {
            return .failure(TaggedError(.badRequest("missing \"cmd\""), tag: tag))
        }
        guard case .string(let command) = commandValue else {
            return .failure(TaggedError(.badRequest("\"cmd\" must be a string"), tag: tag))
        }
        return .success(ControlRequest(command: command, tag: tag, arguments: object))
    }

    private static func tagProblem(_ tag: JSONValue) -> String? {
        switch tag {
        case .array, .object:
            return "\"tag\" must be a JSON scalar"
        case .number(let number) where !number.isFinite:
            return "\"tag\" must be a finite number"
        default:
            if JSONWriter.serializedSize(tag) > maxTagSize {
                return "\"tag\" longer than \(maxTagSize) bytes"
            }
            return nil
        }
    }

    // MARK: - Typed arguments: the one reader every command uses, with one message form

    /// An integer argument's token, type-checked only: nil when absent; anything but an integer
    /// token (`1.0`, `1e2`, `"1"`, `true`, `null`) is `bad-request`. `attach` checks types before
    /// `busy` and values after it (§2), so the two checks are separate.
    package func integerToken(_ key: String) throws(ControlError) -> JSONNumber? {
        guard let value = arguments[key] else { return nil }
        guard case .number(let number) = value, number.isInteger else {
            throw .badRequest("\"\(key)\" must be an integer")
        }
        return number
    }

    /// The value of an integer token: outside `range`, including beyond 64 bits, it is
    /// `invalid-argument`. The token is read exactly, never via `Double`.
    package static func value(of number: JSONNumber, _ key: String, in range: ClosedRange<Int64>)
        throws(ControlError) -> Int64
    {
        guard let value = number.int64, range.contains(value) else {
            throw .invalidArgument("\"\(key)\" must be in \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    /// An integer argument, type- and range-checked at once; nil when absent.
    package func integer(_ key: String, in range: ClosedRange<Int64>) throws(ControlError) -> Int64? {
        guard let number = try integerToken(key) else { return nil }
        return try Self.value(of: number, key, in: range)
    }

    /// A boolean argument: nil when absent; anything but `true`/`false` (`null` included) is
    /// `bad-request`.
    package func bool(_ key: String) throws(ControlError) -> Bool? {
        guard let value = arguments[key] else { return nil }
        guard case .bool(let flag) = value else { throw .badRequest("\"\(key)\" must be a boolean") }
        return flag
    }

    /// A string argument: nil when absent; any other type (`null` included) is `bad-request`.
    package func string(_ key: String) throws(ControlError) -> String? {
        guard let value = arguments[key] else { return nil }
        guard case .string(let text) = value else { throw .badRequest("\"\(key)\" must be a string") }
        return text
    }

    /// A required argument: absence is `bad-request`.
    package static func required<T>(_ value: T?, _ key: String) throws(ControlError) -> T {
        guard let value else { throw .badRequest("missing \"\(key)\"") }
        return value
    }
}
