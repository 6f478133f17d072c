/// The server side of the fixed-newstyle NBD handshake as a byte-driven state machine: the
/// caller feeds whatever bytes arrived and sends whatever bytes it is given, so the protocol
/// logic owns no socket, no timer and no thread, and the fuzzer and the tests drive it directly.
///
/// Every length a client sends is bounded before anything is buffered: an option's data above
/// `maximumOptionLength` is discarded as it streams in and answered `NBD_REP_ERR_TOO_BIG`, names
/// above 4096 bytes (the spec's limit for strings) are `NBD_REP_ERR_INVALID`, and a client that
/// sends more than `maximumOptions` options is dropped. The caller bounds the time (the
/// handshake deadline), since only it has a clock.
package struct NBDHandshake {
    /// Option data kept in memory at most; longer data is skipped unread.
    package static let maximumOptionLength = 16 * 1024
    /// The spec's bound for every string (export names, queries, messages).
    package static let maximumStringLength = 4096
    /// Options accepted per connection before the client is taken for a denial of service.
    package static let maximumOptions = 256
    /// The id `base:allocation` gets from `NBD_OPT_SET_META_CONTEXT`.
    package static let allocationContextID: UInt32 = 1
    package static let allocationContextName = "base:allocation"
    /// 'NBDMAGIC', 'IHAVEOPT' and the handshake flags.
    package static let greetingLength = 18

    /// Whether a client may enter transmission right now. The daemon decides (the coexistence
    /// rule, shutdown); the handshake only turns the answer into the reply the spec names.
    package enum Availability: Equatable, Sendable {
        case available
        /// Refused by policy (`NBD_REP_ERR_POLICY`, with the reason as the message).
        case refused(String)
        /// The daemon is stopping: every option but `NBD_OPT_ABORT` gets `NBD_REP_ERR_SHUTDOWN`.
        case shuttingDown
    }

    /// Why a handshake ended without transmission.
    package enum End: Equatable, Sendable {
        /// The client sent `NBD_OPT_ABORT` (and was acknowledged).
        case aborted
        /// Client flags with a bit this server did not offer.
        case unknownClientFlags(UInt32)
        /// An option not preceded by 'IHAVEOPT'.
        case badOptionMagic(UInt64)
        /// `NBD_OPT_EXPORT_NAME` for an unknown or refused export: it has no error reply.
        case exportRefused
        case tooManyOptions
    }

    package enum Outcome: Equatable, Sendable {
        /// Waiting for more bytes.
        case pending
        /// `NBD_OPT_GO` was acknowledged or `NBD_OPT_EXPORT_NAME` answered: bytes after
        /// `consumed` belong to the transmission phase.
        case transmission(NBDSession)
        /// Send the output, then close the connection.
        case closed(End)
    }

    private enum Phase {
        case clientFlags
        case optionHeader
        case optionData(option: UInt32, length: Int)
        case discarding(option: UInt32, remaining: UInt32)
        case finished
    }

    package let export: NBDExport
    private var phase = Phase.clientFlags
    private var input: [UInt8] = []
    private var clientFlags: NBDClientFlags = []
    private var optionCount = 0
    package internal(set) var structuredReplies = false
    package internal(set) var allocationContext: UInt32?

    package init(export: NBDExport) {
        self.export = export
        input.reserveCapacity(16)
    }

    /// The server's first message, sent as soon as the connection is accepted.
    package func greeting(into output: inout [UInt8]) {
        NBDWire.append(NBDMagic.server, to: &output)
        NBDWire.append(NBDMagic.option, to: &output)
        NBDWire.append(NBDHandshakeFlags([.fixedNewstyle, .noZeroes]).rawValue, to: &output)
    }

    /// Consumes bytes from `bytes` and appends the replies to `output`. Stops at the end of the
    /// handshake, so `consumed` may be less than `bytes.count` only when the outcome is not
    /// `.pending`.
    package mutating func feed(
        _ bytes: UnsafeRawBufferPointer, availability: Availability = .available, output: inout [UInt8]
    ) -> (consumed: Int, outcome: Outcome) {
        var position = 0
        while true {
            switch phase {
            case .finished:
                return (position, .pending)
            case .discarding(let option, let remaining):
                let n = min(Int(remaining), bytes.count - position)
                position += n
                if n < Int(remaining) {
                    phase = .discarding(option: option, remaining: remaining - UInt32(n))
                    return (position, .pending)
                }
                phase = .optionHeader
                if let end = finishOversized(option: option, availability: availability, output: &output) {
                    phase = .finished
                    return (position, .closed(end))
                }
                continue
            default:
                break
            }
            let needed = bytesNeeded
            let take = min(needed - input.count, bytes.count - position)
            if take > 0 {
                input.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[position..<position + take]))
                position += take
            }
            if input.count < needed { return (position, .pending) }
            let outcome = step(availability: availability, output: &output)
            input.removeAll(keepingCapacity: true)
            if outcome != .pending {
                phase = .finished
                return (position, outcome)
            }
        }
    }

    private var bytesNeeded: Int {
        switch phase {
        case .clientFlags: 4
        case .optionHeader: 16
        case .optionData(_, let length): length
        case .discarding, .finished: 0
        }
    }

    /// Handles one complete unit (client flags, option header or option data) in `input`.
    private mutating func step(availability: Availability, output: inout [UInt8]) -> Outcome {
        let unit = input[...]
        switch phase {
        case .clientFlags:
            let raw = NBDWire.read(UInt32.self, from: unit, at: 0)!
            clientFlags = NBDClientFlags(rawValue: raw)
            guard NBDClientFlags.known.isSuperset(of: clientFlags) else { return .closed(.unknownClientFlags(raw)) }
            phase = .optionHeader
            return .pending
        case .optionHeader:
            let magic = NBDWire.read(UInt64.self, from: unit, at: 0)!
            guard magic == NBDMagic.option else { return .closed(.badOptionMagic(magic)) }
            optionCount += 1
            guard optionCount <= Self.maximumOptions else { return .closed(.tooManyOptions) }
            let option = NBDWire.read(UInt32.self, from: unit, at: 8)!
            let length = NBDWire.read(UInt32.self, from: unit, at: 12)!
            if length > UInt32(Self.maximumOptionLength) {
                phase = .discarding(option: option, remaining: length)
                return .pending
            }
            phase = .optionData(option: option, length: Int(length))
            if length == 0 { return handle(option: option, data: [], availability: availability, output: &output) }
            return .pending
        case .optionData(let option, _):
            return handle(option: option, data: unit, availability: availability, output: &output)
        case .discarding, .finished:
            return .pending
        }
    }

    /// The answer to an option whose data was too long to keep.
    private mutating func finishOversized(option: UInt32, availability: Availability, output: inout [UInt8]) -> End? {
        if option == NBDOption.exportName.rawValue { return .exportRefused }
        reply(to: option, .tooBig, message: "option data longer than \(Self.maximumOptionLength) bytes", &output)
        return nil
    }

    private mutating func handle(
        option raw: UInt32, data: ArraySlice<UInt8>, availability: Availability, output: inout [UInt8]
    ) -> Outcome {
        phase = .optionHeader
        guard let option = NBDOption(rawValue: raw) else {
            reply(to: raw, .unsupported, message: "unknown option \(raw)", &output)
            return .pending
        }
        if availability == .shuttingDown && option != .abort {
            if option == .exportName { return .closed(.exportRefused) }
            reply(to: raw, .shutdown, message: "the server is shutting down", &output)
            return .pending
        }
        switch option {
        case .exportName:
            return exportName(data, availability: availability, output: &output)
        case .abort:
            reply(to: raw, .ack, &output)
            return .closed(.aborted)
        case .list:
            guard data.isEmpty else {
                reply(to: raw, .invalid, message: "NBD_OPT_LIST carries no data", &output)
                return .pending
            }
            var payload: [UInt8] = []
            NBDWire.append(UInt32(export.name.utf8.count), to: &payload)
            payload.append(contentsOf: export.name.utf8)
            reply(to: raw, .server, payload: payload, &output)
            reply(to: raw, .ack, &output)
        case .startTLS:
            reply(to: raw, data.isEmpty ? .policy : .invalid, message: "TLS is not offered", &output)
        case .info, .go:
            return infoOrGo(option, data, availability: availability, output: &output)
        case .structuredReply:
            guard data.isEmpty else {
                reply(to: raw, .invalid, message: "NBD_OPT_STRUCTURED_REPLY carries no data", &output)
                return .pending
            }
            structuredReplies = true
            reply(to: raw, .ack, &output)
        case .listMetaContext, .setMetaContext:
            metaContext(option, data, output: &output)
        case .peekExport, .extendedHeaders:
            reply(to: raw, .unsupported, message: "option \(raw) is not supported", &output)
        }
        return .pending
    }

    private func exportName(_ data: ArraySlice<UInt8>, availability: Availability, output: inout [UInt8]) -> Outcome {
        guard data.count <= Self.maximumStringLength, export.matches(name: data), availability == .available else {
            return .closed(.exportRefused)
        }
        let flags = export.transmissionFlags(structuredReplies: structuredReplies)
        NBDWire.append(export.size, to: &output)
        NBDWire.append(flags.rawValue, to: &output)
        if !clientFlags.contains(.noZeroes) { output.append(contentsOf: repeatElement(0, count: 124)) }
        return .transmission(session(flags: flags, agreedBlockSize: false, name: data))
    }

    func session(flags: NBDTransmissionFlags, agreedBlockSize: Bool, name: ArraySlice<UInt8>) -> NBDSession {
        NBDSession(
            structuredReplies: structuredReplies, allocationContext: allocationContext, transmissionFlags: flags,
            agreedBlockSize: agreedBlockSize, exportName: String(decoding: name, as: UTF8.self))
    }

    /// One option reply: magic, option, type, length, payload.
    func reply(
        to option: UInt32, _ type: NBDOptionReplyType, payload: [UInt8] = [], message: String = "",
        _ output: inout [UInt8]
    ) {
        let body = payload + Array(message.utf8.prefix(Self.maximumStringLength))
        NBDWire.append(NBDMagic.optionReply, to: &output)
        NBDWire.append(option, to: &output)
        NBDWire.append(type.rawValue, to: &output)
        NBDWire.append(UInt32(body.count), to: &output)
        output.append(contentsOf: body)
    }
}
