import CLibAIO
import Glibc

/// One validated vhost-user message from the front-end, owning the fds that came with it.
///
/// Validation happens once, in `init`: version bits, request number, payload size against the
/// request type (before the payload is even read, for `receive`), and fd count against the
/// request type and payload. After that, the typed accessors cannot fail on size and handlers
/// never look at raw bytes. Control plane only: this allocates (the payload array), the data
/// path never touches it.
package struct VhostUserMessage: ~Copyable {
    package let header: VhostUserHeader
    package let request: VhostUserRequest
    package let payload: [UInt8]
    package var descriptors: ReceivedDescriptors

    /// Judges a complete message. On failure the fds are closed (the owner is consumed).
    package init(
        header: VhostUserHeader, payload: [UInt8], descriptors: consuming ReceivedDescriptors
    ) throws(VhostUserError) {
        let request = try Self.check(header: header)
        guard payload.count == Int(header.size) else { throw .badPayloadSize(request, size: payload.count) }
        try Self.checkPayload(request, payload)
        try Self.checkDescriptors(request, payload, count: descriptors.count)
        self.header = header
        self.request = request
        self.payload = payload
        self.descriptors = descriptors
    }

    /// Reads one message from a SOCK_STREAM socket: nil on an orderly close between messages.
    ///
    /// The header is judged before the payload is read, so a hostile size never makes us read
    /// (or allocate) more than `VhostUserLimits.maxPayload` bytes. Blocks until the whole message
    /// is in: QEMU writes a message with one sendmsg, so this waits at most a scheduling hiccup.
    /// Once the first bytes are in, the whole message must arrive within `deadlineMilliseconds`
    /// (0: no limit), so a peer dripping it byte by byte cannot hold the caller's thread.
    package static func receive(from socket: Int32, deadlineMilliseconds: Int32 = 0) throws(VhostUserError)
        -> VhostUserMessage?
    {
        var deadline: Int64 = 0
        var headerBytes = (UInt32(0), UInt32(0), UInt32(0))
        var fds = [Int32](repeating: -1, count: VhostUserLimits.maxMemoryRegions)
        var fdCount: Int32 = 0
        let n = withUnsafeMutableBytes(of: &headerBytes) { h in
            fds.withUnsafeMutableBufferPointer { f in
                clibaio_vhost_recv_header(
                    socket, h.baseAddress, 12, f.baseAddress, Int32(f.count), &fdCount, &deadline, deadlineMilliseconds)
            }
        }
        let kept = Int(min(fdCount, Int32(VhostUserLimits.maxMemoryRegions)))
        let owned = ReceivedDescriptors(adopting: Array(fds.prefix(kept)))
        if n == 0 { return nil }
        if n < 0 { throw n == -Int(ECONNRESET) ? .truncated : .system(Errno(rawValue: Int32(-n))) }
        let header = withUnsafeBytes(of: &headerBytes) { VhostUserHeader(bytes: $0) }
        let request = try check(header: header)
        if Int(fdCount) > kept { throw .badDescriptorCount(request, count: Int(fdCount)) }
        var payload = [UInt8](repeating: 0, count: Int(header.size))
        var stray: Int32 = 0
        let p = payload.withUnsafeMutableBytes {
            clibaio_vhost_recv_payload(socket, $0.baseAddress, $0.count, &stray, &deadline, deadlineMilliseconds)
        }
        if p < 0 { throw p == -Int(ECONNRESET) ? .truncated : .system(Errno(rawValue: Int32(-p))) }
        if stray > 0 { throw .badDescriptorCount(request, count: Int(fdCount + stray)) }
        return try VhostUserMessage(header: header, payload: payload, descriptors: owned)
    }

    // MARK: - Validation

    /// Version, reply bit, request number and the size bound: everything the header alone says.
    package static func check(header: VhostUserHeader) throws(VhostUserError) -> VhostUserRequest {
        guard header.flags & VhostUserHeader.versionMask == VhostUserHeader.version else {
            throw .badVersion(flags: header.flags)
        }
        guard header.flags & VhostUserHeader.replyFlag == 0 else { throw .unexpectedReply(request: header.request) }
        guard let request = VhostUserRequest(rawValue: header.request) else {
            throw .unknownRequest(header.request)
        }
        guard header.size <= UInt32(VhostUserLimits.maxPayload) else {
            throw .payloadTooLarge(request: header.request, size: header.size)
        }
        if case .exactly(let n) = request.payloadRule, Int(header.size) != n {
            throw .badPayloadSize(request, size: Int(header.size))
        }
        return request
    }

    private static func checkPayload(_ request: VhostUserRequest, _ payload: [UInt8]) throws(VhostUserError) {
        switch request.payloadRule {
        case .exactly(let n):
            guard payload.count == n else { throw .badPayloadSize(request, size: payload.count) }
        case .memoryTable:
            guard payload.count >= 8 else { throw .badPayloadSize(request, size: payload.count) }
            let count = load(UInt32.self, payload, 0)
            guard count >= 1, count <= UInt32(VhostUserLimits.maxMemoryRegions) else { throw .badRegionCount(count) }
            guard payload.count == 8 + Int(count) * VhostUserMemoryRegion.byteCount else {
                throw .badRegionCount(count)
            }
        case .config:
            guard payload.count >= 12 else { throw .badPayloadSize(request, size: payload.count) }
            let size = load(UInt32.self, payload, 4)
            guard size <= UInt32(VhostUserLimits.maxConfigSize), payload.count == 12 + Int(size) else {
                throw .badConfigSize(size)
            }
        case .notSupported:
            break
        }
    }

    private static func checkDescriptors(
        _ request: VhostUserRequest, _ payload: [UInt8], count: Int
    ) throws(VhostUserError) {
        switch request {
        case .setMemTable:
            guard count == Int(load(UInt32.self, payload, 0)) else { throw .badDescriptorCount(request, count: count) }
        case .setVringKick, .setVringCall, .setVringErr:
            let noFD = load(UInt64.self, payload, 0) & VhostUserLimits.vringNoFDBit != 0
            guard count == (noFD ? 0 : 1) else { throw .badDescriptorCount(request, count: count) }
        default:
            guard request.allowedDescriptors.contains(count) else { throw .badDescriptorCount(request, count: count) }
        }
    }

    private static func load<T: FixedWidthInteger>(_ type: T.Type, _ bytes: [UInt8], _ offset: Int) -> T {
        bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }

    // MARK: - Typed payloads (sizes were checked in init)

    /// GET/SET_FEATURES, SET_PROTOCOL_FEATURES, SET_STATUS: the u64.
    package func u64() throws(VhostUserError) -> UInt64 {
        guard request.payloadRule == .exactly(8) else { throw .wrongPayloadKind(request) }
        return Self.load(UInt64.self, payload, 0)
    }

    package func vringState() throws(VhostUserError) -> VhostUserVringState {
        switch request {
        case .setVringNum, .setVringBase, .getVringBase, .setVringEnable:
            return VhostUserVringState(
                index: Self.load(UInt32.self, payload, 0), num: Self.load(UInt32.self, payload, 4))
        default:
            throw .wrongPayloadKind(request)
        }
    }

    package func vringAddress() throws(VhostUserError) -> VhostUserVringAddress {
        guard request == .setVringAddr else { throw .wrongPayloadKind(request) }
        return VhostUserVringAddress(
            index: Self.load(UInt32.self, payload, 0), flags: Self.load(UInt32.self, payload, 4),
            descriptorTable: Self.load(UInt64.self, payload, 8), usedRing: Self.load(UInt64.self, payload, 16),
            availableRing: Self.load(UInt64.self, payload, 24), logGuestAddress: Self.load(UInt64.self, payload, 32))
    }

    /// SET_VRING_KICK/CALL/ERR: the index and whether an fd is attached (take it with
    /// `descriptors.take(0)`).
    package func vringFile() throws(VhostUserError) -> VhostUserVringFile {
        switch request {
        case .setVringKick, .setVringCall, .setVringErr:
            let value = Self.load(UInt64.self, payload, 0)
            return VhostUserVringFile(
                index: UInt32(value & VhostUserLimits.vringIndexMask),
                hasDescriptor: value & VhostUserLimits.vringNoFDBit == 0)
        default:
            throw .wrongPayloadKind(request)
        }
    }

    /// SET_MEM_TABLE: the regions, in the order of the fds that came with them.
    package func memoryRegions() throws(VhostUserError) -> [VhostUserMemoryRegion] {
        guard request == .setMemTable else { throw .wrongPayloadKind(request) }
        let count = Int(Self.load(UInt32.self, payload, 0))
        return (0..<count).map { i in
            let base = 8 + i * VhostUserMemoryRegion.byteCount
            return VhostUserMemoryRegion(
                guestPhysicalAddress: Self.load(UInt64.self, payload, base),
                size: Self.load(UInt64.self, payload, base + 8),
                userAddress: Self.load(UInt64.self, payload, base + 16),
                mmapOffset: Self.load(UInt64.self, payload, base + 24))
        }
    }

    /// GET_INFLIGHT_FD / SET_INFLIGHT_FD (SET's fd: `descriptors.take(0)`).
    package func inflightDescription() throws(VhostUserError) -> VhostUserInflightDescription {
        guard request == .getInflightFD || request == .setInflightFD else { throw .wrongPayloadKind(request) }
        return VhostUserInflightDescription(
            mmapSize: Self.load(UInt64.self, payload, 0), mmapOffset: Self.load(UInt64.self, payload, 8),
            queueCount: Self.load(UInt16.self, payload, 16), queueSize: Self.load(UInt16.self, payload, 18))
    }

    package func configAccess() throws(VhostUserError) -> VhostUserConfigAccess {
        guard request == .getConfig || request == .setConfig else { throw .wrongPayloadKind(request) }
        return VhostUserConfigAccess(
            offset: Self.load(UInt32.self, payload, 0), size: Self.load(UInt32.self, payload, 4),
            flags: Self.load(UInt32.self, payload, 8), bytes: Array(payload[12...]))
    }
}
