import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// A vhost-user-blk front-end driven the way QEMU drives one, for tests against the real
/// `tapdiskd --vhost-user-blk` process: memfd guest memory handed over with SCM_RIGHTS, feature
/// negotiation (VERSION_1, PROTOCOL_FEATURES, REPLY_ACK), one split ring (`VhostUserTestRing`
/// over the same memfd, so the test writes exactly what the daemon reads) and eventfd kicks.
///
/// Every wait has a deadline (`timeout`): a daemon that never answers fails the test in seconds
/// instead of hanging it. Replies are read with a private reader, not `VhostUserMessage`, which
/// is the back-end's judge of requests and refuses the reply bit.
final class VhostUserTestFrontend {
    typealias Ring = VhostUserTestRing

    struct Failure: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    /// The daemon closed the connection (EOF or reset).
    struct Closed: Error {}

    static let wantedFeatures =
        VirtioFeatures.version1 | VirtioFeatures.vhostUserProtocolFeatures | VirtioFeatures.ringIndirectDescriptors
        | VirtioFeatures.ringEventIndex | VirtioFeatures.blkSegMax | VirtioFeatures.blkSizeMax
        | VirtioFeatures.blkBlockSize | VirtioFeatures.blkFlush
    /// What the status byte holds until the daemon writes it (no virtio status has this value).
    static let sentinel: UInt8 = 0xEE
    static let replyFlag: UInt32 = 0x4
    static let needReplyFlag: UInt32 = 0x8

    /// The connection (-1 once `disconnect` closed it).
    var socket: Int32
    let memfd: FileDescriptor
    var ring: Ring
    let kickFD: FileDescriptor
    let callFD: FileDescriptor
    let queueSize: Int
    /// Seconds any single answer may take.
    let timeout: Double
    /// Feature bits asked for on top of `wantedFeatures` when offered (DISCARD, WRITE_ZEROES).
    var extraFeatures: UInt64 = 0
    /// Protocol feature bits asked for on top of REPLY_ACK and CONFIG when offered.
    var extraProtocolFeatures: UInt64 = 0
    /// The inflight region's fd, kept across reconnects as QEMU keeps it (-1: none yet).
    var inflightFD: Int32 = -1
    var inflightSize: UInt64 = 0
    private(set) var offeredFeatures: UInt64 = 0
    private(set) var features: UInt64 = 0
    private(set) var protocolFeatures: UInt64 = 0
    private(set) var capacitySectors: UInt64 = 0
    private(set) var sizeMax: UInt32 = 0
    private(set) var segMax: UInt32 = 0
    /// used->idx as far as `collect` read it.
    private(set) var seenUsed: UInt16 = 0
    /// Every used element collected on this connection, in order.
    private(set) var used: [(id: UInt32, length: UInt32)] = []
    /// How many times each head was made available on this connection.
    private(set) var posted: [UInt16: Int] = [:]

    init(socketPath: String, queueSize: Int = 128, timeout: Double = 5) throws {
        self.queueSize = queueSize
        self.timeout = timeout
        memfd = try VhostUserTest.memfd(bytes: Int(Ring.bytes))
        ring = try Ring(size: queueSize, sharing: memfd)
        kickFD = try FileDescriptor.eventFD()
        callFD = try FileDescriptor.eventFD()
        socket = try Self.connect(socketPath, seconds: timeout)
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(socket, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit {
        disconnect()
        if inflightFD >= 0 { close(inflightFD) }
    }

    /// Closes the connection, as a front-end that dies does.
    func disconnect() {
        if socket >= 0 { close(socket) }
        socket = -1
    }

    /// Connects, retrying while the listener is not there yet.
    private static func connect(_ path: String, seconds: Double) throws -> Int32 {
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while true {
            let fd = clibaio_stream_connect(path)
            if fd >= 0 { return fd }
            if MonotonicClock.nanoseconds() > deadline {
                throw Failure("cannot connect to \(path): \(Errno(rawValue: -fd))")
            }
            usleep(20_000)
        }
    }

    private var deadline: UInt64 { MonotonicClock.nanoseconds() + UInt64(timeout * 1e9) }

    // MARK: - Messages

    func send(_ request: UInt32, flags: UInt32 = 1, payload: [UInt8] = [], fds: [Int32] = []) throws {
        try sendRaw(VhostUserTest.header(request, flags: flags, size: payload.count) + payload, fds: fds)
    }

    func send(_ request: VhostUserRequest, flags: UInt32 = 1, payload: [UInt8] = [], fds: [Int32] = []) throws {
        try send(request.rawValue, flags: flags, payload: payload, fds: fds)
    }

    func sendRaw(_ bytes: [UInt8], fds: [Int32] = []) throws {
        let fd = socket
        let n = bytes.withUnsafeBytes { b in
            fds.withUnsafeBufferPointer { f in
                clibaio_vhost_send(fd, b.baseAddress, b.count, f.baseAddress, Int32(f.count))
            }
        }
        if n < 0 { throw Errno(rawValue: Int32(-n)) }
    }

    /// Exactly `count` bytes, or `Closed` / a timeout failure.
    private func receive(_ count: Int, until deadline: UInt64) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let now = MonotonicClock.nanoseconds()
            guard now < deadline else { throw Failure("no answer from the daemon within \(timeout) s") }
            let fd = socket
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, Int32((deadline - now) / 1_000_000) + 1) <= 0 { continue }
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, count - done, Int32(MSG_DONTWAIT)) }
            if n == 0 { throw Closed() }
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                if errno == ECONNRESET { throw Closed() }
                throw Errno.current
            }
            done += n
        }
        return out
    }

    /// The reply to `request`: header checked (same request, reply bit), then its payload.
    func reply(to request: VhostUserRequest) throws -> [UInt8] {
        let until = deadline
        let h = try receive(12, until: until)
        let (r, flags, size) = (Self.u32(h, 0), Self.u32(h, 4), Self.u32(h, 8))
        guard r == request.rawValue, flags & Self.replyFlag != 0, size <= 268 else {
            throw Failure("bad reply header to \(request): request \(r) flags \(flags) size \(size)")
        }
        return try receive(Int(size), until: until)
    }

    /// A request whose reply is a u64 (GET_FEATURES, GET_PROTOCOL_FEATURES).
    func ask(_ request: VhostUserRequest) throws -> UInt64 {
        try send(request)
        let p = try reply(to: request)
        guard p.count == 8 else { throw Failure("\(request) reply of \(p.count) bytes") }
        return Self.u64(p, 0)
    }

    /// GET_VRING_BASE for queue 0, as QEMU stops a ring: the last_avail_idx the daemon replies.
    func getVringBase() throws -> UInt32 {
        try send(.getVringBase, payload: Self.state(0))
        let p = try reply(to: .getVringBase)
        guard p.count == 8 else { throw Failure("GET_VRING_BASE reply of \(p.count) bytes") }
        return Self.u32(p, 4)
    }

    var replyAck: Bool { protocolFeatures & VhostUserProtocolFeatures.replyAck != 0 }

    /// A set-up message; with REPLY_ACK it asks for the ack and fails unless it is 0, so every
    /// step is known to be applied before the next.
    func setUp(_ request: VhostUserRequest, payload: [UInt8] = [], fds: [Int32] = []) throws {
        guard replyAck else { return try send(request, payload: payload, fds: fds) }
        try send(request, flags: 1 | Self.needReplyFlag, payload: payload, fds: fds)
        let p = try reply(to: request)
        guard p.count == 8, Self.u64(p, 0) == 0 else { throw Failure("\(request) refused: \(p)") }
    }

    static func state(index: UInt32 = 0, _ num: UInt32) -> [UInt8] { VhostUserTest.le(index) + VhostUserTest.le(num) }

    static func address(_ a: VhostUserVringAddress) -> [UInt8] {
        VhostUserTest.le(a.index) + VhostUserTest.le(a.flags) + VhostUserTest.le(a.descriptorTable)
            + VhostUserTest.le(a.usedRing) + VhostUserTest.le(a.availableRing) + VhostUserTest.le(a.logGuestAddress)
    }

    // MARK: - Set-up, as QEMU orders it

    /// Features, protocol features, owner, config.
    func negotiate() throws {
        offeredFeatures = try ask(.getFeatures)
        guard offeredFeatures & VirtioFeatures.vhostUserProtocolFeatures != 0 else {
            throw Failure("PROTOCOL_FEATURES not offered: \(String(offeredFeatures, radix: 16))")
        }
        let offeredProtocol = try ask(.getProtocolFeatures)
        protocolFeatures =
            offeredProtocol
            & (VhostUserProtocolFeatures.replyAck | VhostUserProtocolFeatures.config | extraProtocolFeatures)
        try send(.setProtocolFeatures, payload: VhostUserTest.le(protocolFeatures))
        try setUp(.setOwner)
        features = offeredFeatures & (Self.wantedFeatures | extraFeatures)
        try setUp(.setFeatures, payload: VhostUserTest.le(features))
        if protocolFeatures & VhostUserProtocolFeatures.config != 0 { try readConfig() }
    }

    /// capacity, size_max and seg_max from GET_CONFIG.
    func readConfig() throws {
        let size: UInt32 = 24
        try send(
            .getConfig,
            payload: VhostUserTest.le(UInt32(0)) + VhostUserTest.le(size) + VhostUserTest.le(UInt32(0))
                + [UInt8](repeating: 0, count: 24))
        let p = try reply(to: .getConfig)
        guard p.count == 12 + Int(size) else { throw Failure("GET_CONFIG reply of \(p.count) bytes") }
        capacitySectors = Self.u64(p, 12)
        sizeMax = Self.u32(p, 20)
        segMax = Self.u32(p, 24)
    }

    func setUpMemory() throws {
        try setUp(.setMemTable, payload: VhostUserTest.memoryTablePayload([Ring.region]), fds: [memfd.rawValue])
    }

    func setUpRing(base: UInt16 = 0) throws {
        try setUp(.setVringNum, payload: Self.state(UInt32(queueSize)))
        try setUp(.setVringBase, payload: Self.state(UInt32(base)))
        try setUp(.setVringAddr, payload: Self.address(ring.addresses))
        try setUp(.setVringCall, payload: VhostUserTest.le(UInt64(0)), fds: [callFD.rawValue])
        try setUp(.setVringKick, payload: VhostUserTest.le(UInt64(0)), fds: [kickFD.rawValue])
        try setUp(.setVringEnable, payload: Self.state(1))
    }

    /// `setUpRing` with avail->idx, used->idx and last_avail_idx all at `index`, as a ring
    /// handed over mid-life (after a reconnect or a migration) is: a run that starts near 65535
    /// crosses the 16-bit wrap of the indices.
    func setUpRing(startingAt index: UInt16) throws {
        ring.setAvailableIndex(index)
        ring.setUsedIndex(index)
        seenUsed = index
        try setUpRing(base: index)
    }

    /// The whole set-up: after this the daemon takes requests from the ring.
    func start() throws {
        try negotiate()
        try setUpMemory()
        try setUpRing()
    }

    // MARK: - The ring

    /// Makes `heads` available (one avail->idx store each), then kicks once.
    func publish(_ heads: UInt16..., kick: Bool = true) { publish(heads, kick: kick) }

    func publish(_ heads: [UInt16], kick: Bool = true) {
        for h in heads {
            ring.publish(h)
            posted[h, default: 0] += 1
        }
        if kick { self.kick() }
    }

    func kick() { kickFD.signal() }

    /// Kicks and waits until the daemon has read the kick (the eventfd, which it shares, is no
    /// longer readable). It services the ring before it reads its next control command, so a
    /// control reply after this reflects everything published before the kick.
    func kickAndWaitUntilTaken(seconds: Double = 10) -> Bool {
        kick()
        let fd = kickFD.rawValue
        return DaemonTest.waitUntil(seconds: seconds) {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            return poll(&p, 1, 0) == 0
        }
    }

    /// Reads the used entries published since the last call; returns how many arrived.
    @discardableResult
    func collect() -> Int {
        let index = ring.usedIndex
        let fresh = Int(index &- seenUsed)
        if fresh > queueSize { Issue.record("used->idx jumped from \(seenUsed) to \(index)") }
        for _ in 0..<min(fresh, queueSize) {
            let e = ring.usedElement(Int(seenUsed))
            used.append((UInt32(littleEndian: e.id), UInt32(littleEndian: e.length)))
            seenUsed &+= 1
        }
        return fresh
    }

    /// Waits until `count` used entries were collected on this connection (false on timeout).
    func waitForUsed(total count: Int, seconds: Double? = nil) -> Bool {
        let until = MonotonicClock.nanoseconds() + UInt64((seconds ?? timeout) * 1e9)
        while true {
            collect()
            if used.count >= count { return true }
            if MonotonicClock.nanoseconds() > until { return false }
            var p = pollfd(fd: callFD.rawValue, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 2) > 0 { _ = callFD.drain() }
        }
    }

    /// How many used entries arrive within `milliseconds` (for "nothing more must come").
    /// The used entries that arrive until the daemon has certainly seen everything this front-end published
    /// and answered everything it took: it kicks, the daemon reads the kick, and `status` then
    /// shows nothing in flight. An answer nobody asked for, or a second one, would be in the ring
    /// by then, so "none" needs no window of time.
    func usedOnceSettled(_ daemon: DaemonProcess, sourceLocation: SourceLocation = #_sourceLocation) -> Int {
        let before = used.count
        #expect(kickAndWaitUntilTaken(), "the daemon never read the kick", sourceLocation: sourceLocation)
        let idle = DaemonTest.waitUntil(seconds: 10) {
            (try? daemon.client().call("status")["in-flight"]?.int64Value) == 0
        }
        #expect(idle, "requests still in flight", sourceLocation: sourceLocation)
        collect()
        return used.count - before
    }

    func usedCount(_ head: UInt16) -> Int { used.filter { $0.id == UInt32(head) }.count }

    /// Heads that got more used entries than they were made available.
    var overAnswered: [UInt16] {
        var counts: [UInt32: Int] = [:]
        for e in used { counts[e.id, default: 0] += 1 }
        return counts.compactMap { id, n in
            id > UInt32(UInt16.max) || n > posted[UInt16(id), default: 0] ? UInt16(truncatingIfNeeded: id) : nil
        }
    }

    // MARK: - Requests

    /// The outhdr of a request whose head descriptor is `first` (`VhostUserTestRing.request`).
    static func headerAddress(_ first: Int) -> UInt64 { Ring.data(0x8_0000 + UInt64(first) * 32) }
    static func statusAddress(_ first: Int) -> UInt64 { headerAddress(first) + 16 }

    /// header, data, status at descriptors first..first+2; the status byte set to the sentinel.
    func prepare(first: Int, type: UInt32, sector: UInt64 = 0, bytes: UInt32 = 4096, dataOffset: UInt64 = 0) {
        ring.request(first: first, type: type, sector: sector, dataLength: bytes, dataOffset: dataOffset)
        setStatus(at: Self.statusAddress(first), Self.sentinel)
    }

    func setStatus(at gpa: UInt64, _ value: UInt8) { ring.host(gpa).storeBytes(of: value, as: UInt8.self) }
    func status(at gpa: UInt64) -> UInt8 { ring.host(gpa).load(as: UInt8.self) }
    func status(_ first: Int) -> UInt8 { status(at: Self.statusAddress(first)) }

    func bytes(at gpa: UInt64, count: Int) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: ring.host(gpa), count: count))
    }

    func fill(at gpa: UInt64, with bytes: [UInt8]) {
        bytes.withUnsafeBytes { ring.host(gpa).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
    }

    /// Publishes `first` as the head, kicks, waits for exactly one more used entry and returns
    /// it with the status byte (nil: no answer in time).
    func submit(first: Int, statusAt gpa: UInt64? = nil) -> (status: UInt8, length: UInt32, id: UInt32)? {
        let before = used.count
        publish(UInt16(first))
        guard waitForUsed(total: before + 1) else { return nil }
        let e = used[before]
        return (status(at: gpa ?? Self.statusAddress(first)), e.length, e.id)
    }

    /// A READ of `bytes` at `sector` into data offset `dataOffset`: status and the data.
    func read(sector: UInt64, bytes: Int = 4096, first: Int = 0, dataOffset: UInt64 = 0) -> (UInt8, [UInt8])? {
        fill(at: Ring.data(dataOffset), with: [UInt8](repeating: 0xA5, count: bytes))
        prepare(first: first, type: VirtioBlkType.read, sector: sector, bytes: UInt32(bytes), dataOffset: dataOffset)
        guard let r = submit(first: first) else { return nil }
        return (r.status, self.bytes(at: Ring.data(dataOffset), count: bytes))
    }

    /// A WRITE of `data` at `sector` from data offset `dataOffset`: the status.
    func write(sector: UInt64, _ data: [UInt8], first: Int = 0, dataOffset: UInt64 = 0) -> UInt8? {
        fill(at: Ring.data(dataOffset), with: data)
        prepare(
            first: first, type: VirtioBlkType.write, sector: sector, bytes: UInt32(data.count), dataOffset: dataOffset)
        return submit(first: first)?.status
    }

    // MARK: - The end of the connection

    /// Whether the daemon closes the connection within `seconds`; anything it sends first (a
    /// failing ack, say) is read and ignored.
    func closedByPeer(within seconds: Double = 5) -> Bool {
        let until = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        var sink = [UInt8](repeating: 0, count: 512)
        let fd = socket
        while MonotonicClock.nanoseconds() < until {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 20) <= 0 { continue }
            let n = sink.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
            if n == 0 || (n < 0 && errno == ECONNRESET) { return true }
        }
        return false
    }

    /// Stops sending (the daemon sees EOF) without closing, so its close is still observable.
    func shutdownWrite() { _ = shutdown(socket, Int32(SHUT_WR)) }

    static func u32(_ b: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * $1) }
    }

    static func u64(_ b: [UInt8], _ at: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * $1) }
    }
}
