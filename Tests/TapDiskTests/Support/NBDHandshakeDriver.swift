@testable import TapDisk

/// Drives an `NBDHandshake` the way a client would, and splits what it answers into messages.
struct NBDHandshakeDriver {
    var handshake: NBDHandshake
    var output: [UInt8] = []
    var outcome: NBDHandshake.Outcome = .pending
    var consumed = 0

    init(export: NBDExport = NBDHandshakeDriver.export, clientFlags: UInt32 = 3) {
        handshake = NBDHandshake(export: export)
        handshake.greeting(into: &output)
        output.removeAll()
        send(Self.be(clientFlags))
    }

    static let export = NBDExport(name: "disk", size: 1 << 30, minimumBlockSize: 512, readOnly: false)

    /// One option reply as parsed from the server's bytes.
    struct Reply: Equatable {
        var option: UInt32
        var type: NBDOptionReplyType
        var payload: [UInt8]
    }

    @discardableResult
    mutating func send(_ bytes: [UInt8], availability: NBDHandshake.Availability = .available) -> NBDHandshake.Outcome {
        let (n, o) = bytes.withUnsafeBytes { handshake.feed($0, availability: availability, output: &output) }
        consumed = n
        outcome = o
        return o
    }

    /// Sends one option and returns the replies it produced.
    mutating func option(
        _ option: UInt32, _ data: [UInt8] = [], availability: NBDHandshake.Availability = .available
    ) -> [Reply] {
        output.removeAll()
        send(
            Self.be(NBDMagic.option) + Self.be(option) + Self.be(UInt32(data.count)) + data, availability: availability)
        return Self.replies(output)
    }

    mutating func option(
        _ option: NBDOption, _ data: [UInt8] = [], availability: NBDHandshake.Availability = .available
    ) -> [Reply] {
        self.option(option.rawValue, data, availability: availability)
    }

    static func replies(_ bytes: [UInt8]) -> [Reply] {
        var replies: [Reply] = []
        var offset = 0
        let s = bytes[...]
        while offset + 20 <= bytes.count, NBDWire.read(UInt64.self, from: s, at: offset) == NBDMagic.optionReply {
            let length = Int(NBDWire.read(UInt32.self, from: s, at: offset + 16)!)
            replies.append(
                Reply(
                    option: NBDWire.read(UInt32.self, from: s, at: offset + 8)!,
                    type: NBDOptionReplyType(rawValue: NBDWire.read(UInt32.self, from: s, at: offset + 12)!),
                    payload: Array(bytes[offset + 20..<offset + 20 + length])))
            offset += 20 + length
        }
        return replies
    }

    static func be<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        var out: [UInt8] = []
        NBDWire.append(value, to: &out)
        return out
    }

    /// `NBD_OPT_GO`/`INFO` data.
    static func goData(name: String = "", infos: [UInt16] = [NBDInfoType.blockSize.rawValue]) -> [UInt8] {
        be(UInt32(name.utf8.count)) + Array(name.utf8) + be(UInt16(infos.count)) + infos.flatMap { be($0) }
    }

    /// `NBD_OPT_LIST_META_CONTEXT`/`SET_META_CONTEXT` data.
    static func metaData(name: String = "", queries: [String]) -> [UInt8] {
        be(UInt32(name.utf8.count)) + Array(name.utf8) + be(UInt32(queries.count))
            + queries.flatMap { be(UInt32($0.utf8.count)) + Array($0.utf8) }
    }
}
