/// Serialized replies and events, ready to send as one datagram each.
///
/// Key order on the wire is `ok` (or `event`) first, then the handler's fields in the order it
/// built them, then `tag` (or `dropped`) last. The reserved keys are written only by these
/// builders, so a handler cannot produce a reply with a duplicated key by accident.
package enum ControlReply {
    /// Error messages are cut to this many UTF-8 bytes (before escaping), so that with the largest
    /// echoed tag (`ControlRequest.maxTagSize`) an error reply always fits one datagram.
    package static let maxMessageSize = 1024

    /// `{"ok":true, ...fields, "tag":tag}`; `tag` nil (the request had none) writes no `tag`.
    ///
    /// A reply that would exceed the datagram limit becomes an `internal` error carrying the
    /// same tag, rather than a datagram the client would see truncated.
    package static func ok(fields: JSONObject = JSONObject(), tag: JSONValue?) -> [UInt8] {
        var object: JSONObject = ["ok": true]
        for member in fields where !isReserved(member.key, "ok", "tag") {
            object.appendUnchecked(member.key, member.value)
        }
        if let tag { object.appendUnchecked("tag", tag) }
        let bytes = JSONWriter.serialize(.object(object))
        guard bytes.count <= ControlRequest.maxDatagramSize else {
            return error(
                .internalError("reply larger than \(ControlRequest.maxDatagramSize) bytes"), tag: tag)
        }
        return bytes
    }

    /// `{"ok":false,"error":{"code":CODE,"message":TEXT},"tag":tag}`.
    package static func error(_ error: ControlError, tag: JSONValue?) -> [UInt8] {
        var object: JSONObject = [
            "ok": false,
            "error": [
                "code": .string(error.code.rawValue), "message": .string(truncated(error.message)),
            ],
        ]
        if let tag { object.appendUnchecked("tag", tag) }
        return JSONWriter.serialize(.object(object))
    }

    /// The error reply for a request that failed to parse.
    package static func error(_ failure: ControlRequest.TaggedError) -> [UInt8] {
        error(failure.error, tag: failure.tag)
    }

    /// `{"event":name, ...fields, "dropped":n}`; `dropped` only when events were lost.
    package static func event(name: String, fields: JSONObject = JSONObject(), dropped: UInt64? = nil)
        -> [UInt8]
    {
        var object: JSONObject = ["event": .string(name)]
        for member in fields where !isReserved(member.key, "event", "dropped") {
            object.appendUnchecked(member.key, member.value)
        }
        if let dropped, dropped > 0 { object.appendUnchecked("dropped", .uint(dropped)) }
        let bytes = JSONWriter.serialize(.object(object))
        assert(bytes.count <= ControlRequest.maxDatagramSize, "event larger than one datagram")
        return bytes
    }

    private static func isReserved(_ key: String, _ first: String, _ second: String) -> Bool {
        let reserved = JSONObject.keysEqual(key, first) || JSONObject.keysEqual(key, second)
        assert(!reserved, "handler fields must not set the reserved key \(key)")
        return reserved
    }

    /// Cuts at a scalar boundary, so the result is still valid text.
    static func truncated(_ message: String) -> String {
        guard message.utf8.count > maxMessageSize else { return message }
        let ellipsis = "..."
        var result = ""
        var size = 0
        for scalar in message.unicodeScalars {
            let width = UTF8.width(scalar)
            if size + width > maxMessageSize - ellipsis.utf8.count { break }
            result.unicodeScalars.append(scalar)
            size += width
        }
        return result + ellipsis
    }
}
