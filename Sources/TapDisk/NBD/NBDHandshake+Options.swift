/// `NBD_OPT_INFO`/`NBD_OPT_GO` and the metadata-context options: the options with structured
/// data, each parsed against the option's length before any field is trusted.
extension NBDHandshake {
    /// Data: u32 name length, name, u16 count, count × u16 information requests, exactly.
    mutating func infoOrGo(
        _ option: NBDOption, _ data: ArraySlice<UInt8>, availability: Availability, output: inout [UInt8]
    ) -> Outcome {
        let raw = option.rawValue
        guard let nameLength = NBDWire.read(UInt32.self, from: data, at: 0), data.count >= 6,
            nameLength <= UInt32(data.count - 6)
        else {
            reply(to: raw, .invalid, message: "malformed \(option == .go ? "NBD_OPT_GO" : "NBD_OPT_INFO")", &output)
            return .pending
        }
        let base = data.startIndex
        let name = data[base + 4..<base + 4 + Int(nameLength)]
        let countOffset = 4 + Int(nameLength)
        let count = Int(NBDWire.read(UInt16.self, from: data, at: countOffset)!)
        guard data.count == countOffset + 2 + 2 * count else {
            reply(to: raw, .invalid, message: "information request count does not match the length", &output)
            return .pending
        }
        guard name.count <= Self.maximumStringLength else {
            reply(to: raw, .invalid, message: "export name longer than 4096 bytes", &output)
            return .pending
        }
        guard export.matches(name: name) else {
            reply(to: raw, .unknown, message: "no such export; this server has one, \"\(export.name)\"", &output)
            return .pending
        }
        if case .refused(let reason) = availability {
            reply(to: raw, .policy, message: reason, &output)
            return .pending
        }
        var requests: Set<UInt16> = []
        for i in 0..<count {
            requests.insert(NBDWire.read(UInt16.self, from: data, at: countOffset + 2 + 2 * i)!)
        }
        let flags = export.transmissionFlags(structuredReplies: structuredReplies)
        var info: [UInt8] = []
        NBDWire.append(NBDInfoType.export.rawValue, to: &info)
        NBDWire.append(export.size, to: &info)
        NBDWire.append(flags.rawValue, to: &info)
        reply(to: raw, .info, payload: info, &output)
        // Sent whether requested or not: the minimum is not the protocol's default of 1.
        info.removeAll()
        NBDWire.append(NBDInfoType.blockSize.rawValue, to: &info)
        NBDWire.append(export.minimumBlockSize, to: &info)
        NBDWire.append(NBDExport.preferredBlockSize, to: &info)
        NBDWire.append(NBDExport.maximumPayload, to: &info)
        reply(to: raw, .info, payload: info, &output)
        if requests.contains(NBDInfoType.name.rawValue) {
            info.removeAll()
            NBDWire.append(NBDInfoType.name.rawValue, to: &info)
            info.append(contentsOf: export.name.utf8)
            reply(to: raw, .info, payload: info, &output)
        }
        reply(to: raw, .ack, &output)
        guard option == .go else { return .pending }
        return .transmission(
            session(flags: flags, agreedBlockSize: requests.contains(NBDInfoType.blockSize.rawValue), name: name))
    }

    /// Data: u32 name length, name, u32 query count, count × (u32 length, query), exactly.
    /// `base:allocation` is the only context; `base:` lists it; other namespaces are ignored, as
    /// the spec requires. A set replaces the selection even when it fails.
    mutating func metaContext(_ option: NBDOption, _ data: ArraySlice<UInt8>, output: inout [UInt8]) {
        let raw = option.rawValue
        let isSet = option == .setMetaContext
        if isSet { allocationContext = nil }
        guard structuredReplies else {
            reply(to: raw, .invalid, message: "negotiate NBD_OPT_STRUCTURED_REPLY first", &output)
            return
        }
        guard let parsed = Self.parseQueries(data) else {
            reply(to: raw, .invalid, message: "malformed metadata context request", &output)
            return
        }
        guard export.matches(name: parsed.name) else {
            reply(to: raw, .unknown, message: "no such export", &output)
            return
        }
        let allocation = Array(Self.allocationContextName.utf8)
        let selects: Bool
        if isSet {
            selects = parsed.queries.contains { $0.elementsEqual(allocation) }
        } else {
            selects =
                parsed.queries.isEmpty
                || parsed.queries.contains { $0.elementsEqual(allocation) || $0.elementsEqual("base:".utf8) }
        }
        if selects {
            var payload: [UInt8] = []
            // The id in a list reply is reserved and should be zero.
            NBDWire.append(isSet ? Self.allocationContextID : 0, to: &payload)
            payload.append(contentsOf: allocation)
            reply(to: raw, .metaContext, payload: payload, &output)
            if isSet { allocationContext = Self.allocationContextID }
        }
        reply(to: raw, .ack, &output)
    }

    /// The export name and the queries, or nil when a length points past the data or bytes are
    /// left over.
    static func parseQueries(_ data: ArraySlice<UInt8>) -> (name: ArraySlice<UInt8>, queries: [ArraySlice<UInt8>])? {
        let base = data.startIndex
        guard let nameLength = NBDWire.read(UInt32.self, from: data, at: 0),
            nameLength <= UInt32(maximumStringLength), Int(nameLength) <= data.count - 8
        else { return nil }
        var offset = 4 + Int(nameLength)
        let name = data[base + 4..<base + offset]
        guard let count = NBDWire.read(UInt32.self, from: data, at: offset) else { return nil }
        offset += 4
        // Every query takes at least its 4-byte length, which bounds the loop by the data.
        guard UInt64(count) * 4 <= UInt64(data.count - offset) else { return nil }
        var queries: [ArraySlice<UInt8>] = []
        for _ in 0..<count {
            guard let length = NBDWire.read(UInt32.self, from: data, at: offset),
                length <= UInt32(maximumStringLength), Int(length) <= data.count - offset - 4
            else { return nil }
            queries.append(data[base + offset + 4..<base + offset + 4 + Int(length)])
            offset += 4 + Int(length)
        }
        return offset == data.count ? (name, queries) : nil
    }
}
