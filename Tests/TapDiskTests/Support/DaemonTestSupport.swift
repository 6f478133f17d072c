import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// Helpers shared by the daemon tests (Tests/TapDiskTests/Blkif): raw datagrams, replies,
/// counters, fd accounting, hand-made attach fds and a frontend driver with deadlines.
enum DaemonTest {
    // MARK: - Images

    /// A sparse temporary image; the caller unlinks it (`defer`).
    static func image(bytes: Int = 16 << 20) throws -> String {
        try EngineHarness.makeTemporaryImage(bytes: bytes)
    }

    // MARK: - Replies

    /// Sends a raw datagram and returns the next reply.
    static func raw(_ client: ControlClient, _ text: String, fds: [Int32] = [], timeoutMilliseconds: Int32 = 10_000)
        throws -> JSONObject
    {
        try raw(client, Array(text.utf8), fds: fds, timeoutMilliseconds: timeoutMilliseconds)
    }

    static func raw(_ client: ControlClient, _ bytes: [UInt8], fds: [Int32] = [], timeoutMilliseconds: Int32 = 10_000)
        throws -> JSONObject
    {
        try client.sendRaw(bytes, fds: fds)
        return try client.receiveReply(timeoutMilliseconds: timeoutMilliseconds)
    }

    /// `error.code` of an `ok: false` reply (nil for a success reply or a malformed one).
    static func code(_ reply: JSONObject) -> String? {
        guard reply["ok"] == .bool(false) else { return nil }
        return reply["error"]?["code"]?.stringValue
    }

    /// The error code of a command that must fail (nil when it succeeded).
    static func refusal(_ client: ControlClient, _ command: String, _ arguments: JSONObject = [:], fds: [Int32] = [])
        throws -> String?
    {
        code(try client.request(command, arguments, fds: fds))
    }

    /// Whether `reply` is a well-formed error reply: exactly `ok`, `error` (`code`, `message`
    /// strings) and optionally `tag`.
    static func isWellFormedError(_ reply: JSONObject) -> Bool {
        guard reply["ok"] == .bool(false), let error = reply["error"]?.objectValue else { return false }
        guard error["code"]?.stringValue != nil, error["message"]?.stringValue != nil else { return false }
        return Set(reply.keys).isSubset(of: ["ok", "error", "tag"])
    }

    // MARK: - Counters (§8)

    static let counterNames = [
        "read-requests", "write-requests", "flush-requests", "barrier-requests", "discard-requests",
        "read-bytes", "write-bytes", "discard-bytes", "read-errors", "write-errors", "flush-errors",
        "discard-errors", "nospace-errors", "invalid-requests", "unsupported-requests", "short-completions",
        "resubmitted-requests", "responses-okay", "responses-error", "responses-eopnotsupp", "in-flight", "held",
        "id-requests",
    ]

    struct Counters {
        var values: [String: UInt64]
        subscript(_ name: String) -> UInt64 { values[name] ?? 0 }
        var consumed: UInt64 {
            [
                "read-requests", "write-requests", "flush-requests", "barrier-requests", "discard-requests",
                "id-requests", "invalid-requests", "unsupported-requests",
            ].reduce(0) { $0 + self[$1] }
        }
        var responses: UInt64 { self["responses-okay"] + self["responses-error"] + self["responses-eopnotsupp"] }
        var invariantHolds: Bool { consumed == responses + self["in-flight"] + self["held"] }
    }

    /// `stats`, with every §8 counter required to be a non-negative integer token.
    static func stats(_ client: ControlClient, sourceLocation: SourceLocation = #_sourceLocation) throws -> Counters {
        let reply = try client.call("stats")
        let object = try #require(reply["counters"]?.objectValue, sourceLocation: sourceLocation)
        var values: [String: UInt64] = [:]
        for name in counterNames {
            let value = try #require(
                object[name]?.uint64Value, "counter \(name) missing or not a u64 integer",
                sourceLocation: sourceLocation)
            values[name] = value
        }
        return Counters(values: values)
    }

    /// §8: consumed == responses + in-flight + held; returns the counters for further checks.
    @discardableResult
    static func expectInvariant(_ client: ControlClient, sourceLocation: SourceLocation = #_sourceLocation) throws
        -> Counters
    {
        let c = try stats(client, sourceLocation: sourceLocation)
        #expect(
            c.invariantHolds,
            "consumed \(c.consumed) != responses \(c.responses) + in-flight \(c["in-flight"]) + held \(c["held"])",
            sourceLocation: sourceLocation)
        return c
    }

    /// `resume` for a disk that `status` said was paused a moment ago; false when it resumed by
    /// itself in between. A nospace pause auto-resumes when the filesystem's free space grows,
    /// which any other process on the machine can cause; under TSan the window is wide enough
    /// that a randomized run hit it (`wrong-state: resume: the disk is running, not paused`).
    static func resumeIfStillPaused(_ client: ControlClient, failHeld: Bool) throws -> Bool {
        do {
            _ = try client.call("resume", ["fail-held": .bool(failHeld)])
            return true
        } catch .refused(code: "wrong-state", _) {
            return false
        }
    }

    // MARK: - Polling

    /// Polls `condition` every 10 ms until it holds or `seconds` pass.
    @discardableResult
    static func waitUntil(seconds: Double = 10, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while true {
            if try condition() { return true }
            if MonotonicClock.nanoseconds() > deadline { return false }
            usleep(10_000)
        }
    }

    /// The next event named `name` (other events are skipped and returned in `skipped`).
    static func nextEvent(
        _ client: ControlClient, named name: String, seconds: Double = 10, skipped: inout [JSONObject]
    ) throws -> JSONObject? {
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while MonotonicClock.nanoseconds() < deadline {
            let left = Int32((deadline - MonotonicClock.nanoseconds()) / 1_000_000) + 1
            guard let event = try client.nextEvent(timeoutMilliseconds: left) else { continue }
            if event["event"]?.stringValue == name { return event }
            skipped.append(event)
        }
        return nil
    }

    static func nextEvent(_ client: ControlClient, named name: String, seconds: Double = 10) throws -> JSONObject? {
        var skipped: [JSONObject] = []
        return try nextEvent(client, named: name, seconds: seconds, skipped: &skipped)
    }

    /// Every event the daemon sent on `client` before it answered a `status` sent now. Replies
    /// and events share the connection in order, so this misses nothing the daemon did before
    /// the reply, however late it is read: the proof a "no such event" check needs.
    static func eventsBeforeReply(_ client: ControlClient) throws -> [JSONObject] {
        try client.call("status")
        return client.drainQueuedEvents()
    }

    // MARK: - Hand-made attach fds

    /// A memfd of `bytes` with `seals` added (`nil`: created without MFD_ALLOW_SEALING).
    static func memfd(bytes: Int, seals: Int32?) throws -> FileDescriptor {
        let flags = clibaio_MFD_CLOEXEC | (seals == nil ? 0 : clibaio_MFD_ALLOW_SEALING)
        let fd = FileDescriptor(adopting: try Errno.check(clibaio_memfd_create("test-ring", flags)))
        guard ftruncate(fd.rawValue, off_t(bytes)) == 0 else { throw Errno.current }
        if let seals, seals != 0 { _ = try Errno.check(clibaio_add_seals(fd.rawValue, seals)) }
        return fd
    }

    /// A pipe: [read end, write end], closed when the owner is released.
    static func pipePair() throws -> RawFDs {
        var p: [Int32] = [-1, -1]
        guard pipe(&p) == 0 else { throw Errno.current }
        return RawFDs(p)
    }

    static func attachArguments(order: Int = 0, dataPages: Int = 16) -> JSONObject {
        ["ring-page-order": .integer(order), "data-pages": .integer(dataPages)]
    }

    /// The raw `attach` request text with the given argument tokens (for mistyped values).
    static func attachText(order: String = "0", dataPages: String = "16", extra: String = "") -> String {
        "{\"cmd\":\"attach\",\"ring-page-order\":\(order),\"data-pages\":\(dataPages)\(extra)}"
    }
}

/// Raw fds closed on release (FileDescriptor is noncopyable, so it cannot sit in arrays).
final class RawFDs {
    let fds: [Int32]
    init(_ fds: [Int32]) { self.fds = fds }
    subscript(_ i: Int) -> Int32 { fds[i] }
    deinit { for fd in fds where fd >= 0 { close(fd) } }
}

/// Drives a `RemoteDisk` from a test: writes/reads with patterns, waits for responses with
/// deadlines, remembers every response by id.
final class DiskDriver {
    let disk: RemoteDisk
    private(set) var responses: [UInt64: [Int16]] = [:]
    private(set) var responseCount = 0
    private(set) var violation = false

    init(_ disk: RemoteDisk) { self.disk = disk }

    convenience init(socketPath: String, pageOrder: Int = 2, dataPages: Int = 64) throws {
        self.init(try RemoteDisk(socketPath: socketPath, pageOrder: pageOrder, dataPages: dataPages))
    }

    var frontend: BlockFrontend { disk.frontend }
    var control: ControlClient { disk.control }

    /// Consumes every published response.
    func collect() {
        let next = disk.frontend.reap { r in
            responses[r.id, default: []].append(r.status)
            responseCount += 1
        }
        if next == .violation { violation = true }
    }

    /// Waits until `count` responses in total arrived (false on timeout).
    @discardableResult
    func wait(forResponses count: Int, seconds: Double = 15) -> Bool {
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        collect()
        while responseCount < count {
            if MonotonicClock.nanoseconds() > deadline { return false }
            _ = disk.waitForResponses(timeoutMilliseconds: 20)
            collect()
        }
        return true
    }

    /// Waits `milliseconds` and returns how many responses arrived meanwhile.
    /// Kicks and waits until the daemon has read the kick (the eventfd is no longer readable; it
    /// drains it whenever it is attached, paused or halted included). It then services the ring
    /// before it reads another command, so a control reply after this reflects what was
    /// published: the proof a "nothing was consumed" check needs.
    func kickAndWaitUntilTaken(seconds: Double = 10) -> Bool {
        frontend.kick.signal()
        let fd = frontend.kick.rawValue
        return DaemonTest.waitUntil(seconds: seconds) {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            return poll(&p, 1, 0) == 0
        }
    }

    func responsesDuring(milliseconds: Int) -> Int {
        let before = responseCount
        let deadline = MonotonicClock.nanoseconds() + UInt64(milliseconds) * 1_000_000
        while MonotonicClock.nanoseconds() < deadline {
            _ = disk.waitForResponses(timeoutMilliseconds: 20)
            collect()
        }
        return responseCount - before
    }

    func status(_ id: UInt64) -> Int16? {
        guard let s = responses[id], s.count == 1 else { return nil }
        return s[0]
    }

    /// One WRITE of `pages` whole pages from data page `gref` (filled with `seed`) at `sector`.
    func enqueueWrite(id: UInt64, sector: UInt64, gref: UInt32, pages: Int = 1, seed: UInt64? = nil) {
        for p in 0..<pages {
            if let seed { Pattern.fill(disk.frontend.page(gref + UInt32(p)), bytes: 4096, seed: seed &+ UInt64(p)) }
        }
        let segs = (0..<pages).map { BlkifSegment(gref: gref + UInt32($0)) }
        disk.frontend.enqueue(BlkifRequest.write(id: id, sector: sector, segments: segs))
    }

    func enqueueRead(id: UInt64, sector: UInt64, gref: UInt32, pages: Int = 1) {
        let segs = (0..<pages).map { BlkifSegment(gref: gref + UInt32($0)) }
        disk.frontend.enqueue(BlkifRequest.read(id: id, sector: sector, segments: segs))
    }

    func push() { disk.frontend.push() }

    /// Writes one page with `seed`, reads it back into another page, and checks both OKAY and
    /// the bytes equal: proof that the data path works end to end.
    func roundTrip(sector: UInt64, seed: UInt64, writeGref: UInt32 = 0, readGref: UInt32 = 1) -> Bool {
        let base = responseCount
        let idW = 0xA000_0000 &+ seed
        let idR = 0xB000_0000 &+ seed
        enqueueWrite(id: idW, sector: sector, gref: writeGref, seed: seed)
        push()
        guard wait(forResponses: base + 1), status(idW) == 0 else { return false }
        memset(disk.frontend.page(readGref), 0, 4096)
        enqueueRead(id: idR, sector: sector, gref: readGref)
        push()
        guard wait(forResponses: base + 2), status(idR) == 0 else { return false }
        return memcmp(disk.frontend.page(readGref), disk.frontend.page(writeGref), 4096) == 0
    }
}

extension DaemonProcess {
    var pid: Int32 { process.processIdentifier }

    /// SIGKILL and reap (for `defer`: a test never leaves a daemon behind).
    func forceStop() {
        if process.isRunning {
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// SIGTERM, then wait for exit; returns the exit status.
    func terminate(timeoutSeconds: Double = 30) -> Int32? {
        signal(SIGTERM)
        return waitForExit(timeoutSeconds: timeoutSeconds)
    }
}

/// Runs the real `tapdiskd` binary to completion (CLI tests), with a timeout.
enum Tapdiskd {
    struct Run {
        var status: Int32
        var stdout: String
        var stderr: String
        var stderrLines: [Substring] { stderr.split(separator: "\n", omittingEmptySubsequences: true) }
    }

    /// Runs `tapdiskd ARGS`; a run that outlives `timeoutSeconds` is killed (status 137).
    static func run(_ arguments: [String], timeoutSeconds: Double = 20) throws -> Run {
        let r = try Shell.run([DaemonProcess.binary] + arguments, timeoutSeconds: timeoutSeconds)
        return Run(status: r.status, stdout: r.stdout, stderr: r.stderr)
    }
}

extension DaemonTest {
    /// `sendmsg` with any number of fds in one SCM_RIGHTS message (the client library caps it at
    /// 8); the cmsg is laid out by hand: a 16-byte `cmsghdr` on x86_64, then the fds.
    static func sendManyFDs(_ client: ControlClient, _ text: String, fds: [Int32]) throws {
        let bytes = Array(text.utf8)
        let dataLength = fds.count * 4
        let cmsgLength = 16 + dataLength
        let space = (cmsgLength + 7) & ~7
        var control = [UInt8](repeating: 0, count: space)
        control.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: cmsgLength, toByteOffset: 0, as: Int.self)
            raw.storeBytes(of: SOL_SOCKET, toByteOffset: 8, as: Int32.self)
            raw.storeBytes(of: Int32(SCM_RIGHTS), toByteOffset: 12, as: Int32.self)
            for (i, fd) in fds.enumerated() { raw.storeBytes(of: fd, toByteOffset: 16 + 4 * i, as: Int32.self) }
        }
        var payload = bytes
        let n = payload.withUnsafeMutableBytes { p in
            control.withUnsafeMutableBytes { c in
                var iov = iovec(iov_base: p.baseAddress, iov_len: p.count)
                return withUnsafeMutablePointer(to: &iov) { iovp in
                    var msg = msghdr()
                    msg.msg_iov = iovp
                    msg.msg_iovlen = 1
                    msg.msg_control = c.baseAddress
                    msg.msg_controllen = c.count
                    return sendmsg(client.fd.rawValue, &msg, Int32(MSG_NOSIGNAL))
                }
            }
        }
        guard n == bytes.count else { throw Errno.current }
    }
}
