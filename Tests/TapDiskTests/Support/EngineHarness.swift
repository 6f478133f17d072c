import CLibAIO
import Glibc

@testable import TapDisk

/// An engine and a frontend over one memfd in this process, driven single-threaded through the
/// daemon's own `DiskLoop`: the test plays the frontend (it kicks only when its push says so, and
/// reads responses only when the notify eventfd is ready), and the loop acts only on ready fds.
final class EngineHarness: DiskLoopHost {
    let engine: Engine
    let loop: DiskLoop
    let frontend: BlockFrontend
    let imagePath: String
    private let ownsImage: Bool
    /// Every response, in arrival order.
    private(set) var responses: [FrontendRing.Response] = []
    private(set) var events: [EngineEvent] = []
    var violations = 0
    /// When set, responses go here instead of `responses` (the allocation test keeps no array).
    var responseSink: ((FrontendRing.Response) -> Void)? = nil
    /// Notifications the frontend received (the notify eventfd was ready).
    private(set) var notifications = 0

    static let notifyToken = DiskLoop.Token.firstHostToken

    init(
        imageBytes: Int = 8 << 20, imagePath: String? = nil, cache: CacheMode = .none, readOnly: Bool = false,
        policy: FailurePolicy = FailurePolicy(), pageOrder: Int = 2, dataPages: Int = 512, startIndex: UInt32 = 0,
        attach: Bool = true, pollMicroseconds: UInt64 = 0
    ) throws {
        if let imagePath {
            self.imagePath = imagePath
            ownsImage = false
        } else {
            self.imagePath = try Self.makeTemporaryImage(bytes: imageBytes)
            ownsImage = true
        }
        let image = try Image(path: self.imagePath, cache: cache, readOnly: readOnly)
        engine = try Engine(image: image, policy: policy, maxRingPageOrder: max(4, pageOrder))
        loop = try DiskLoop(engine: engine)
        loop.pollNanos = pollMicroseconds * 1000
        frontend = try BlockFrontend(pageOrder: pageOrder, dataPages: dataPages, startIndex: startIndex)
        try loop.add(frontend.notify.rawValue, token: Self.notifyToken)
        engine.onEvent = { [weak self] in self?.events.append($0) }
        if attach { try self.attach() }
    }

    deinit {
        if engine.isAttached {
            engine.beginDetach()
            _ = waitDrained()
            _ = loop.finishDetach()
        }
        if ownsImage { unlink(imagePath) }
    }

    /// Attaches this harness's frontend, as the daemon's `attach` command does, and lets the loop
    /// serve what was published before.
    func attach() throws {
        try engine.attach(frontend.makeAttachment())
        runWhileBusy()
    }

    /// `DiskLoop.finishDetach`: what the daemon does once a detach has drained.
    func finishDetach() -> UInt32 {
        let cons = loop.finishDetach()
        runWhileBusy()
        return cons
    }

    static func makeTemporaryImage(bytes: Int, directory: String = "/var/tmp") throws -> String {
        var template = Array("\(directory)/tapdisk-test-XXXXXX.img".utf8CString)
        let fd = mkstemps(&template, 4)
        guard fd >= 0 else { throw Errno.current }
        defer { close(fd) }
        guard ftruncate(fd, off_t(bytes)) == 0 else { throw Errno.current }
        return String(cString: template)
    }

    /// Enqueues and publishes requests (kicking only if the ring asks for it), then runs the loop
    /// for as long as something is ready.
    func submit(_ requests: [clibaio_blkif_request]) {
        for r in requests { frontend.enqueue(r) }
        frontend.push()
        runWhileBusy()
    }

    /// The frontend reads every published response (also called after a notification).
    func collect() {
        let next: FrontendRing.Next
        if let responseSink {
            next = frontend.reap(responseSink)
        } else {
            next = frontend.reap { responses.append($0) }
        }
        if next == .violation { violations += 1 }
    }

    // MARK: - DiskLoopHost: the frontend side of the loop

    func dispatch(_ ready: Poller.Ready) {
        guard ready.token == Self.notifyToken else { return }
        notifications += 1
        frontend.notify.drain()
        collect()
    }

    func finishWakeup() -> Bool { false }

    // MARK: - Running the loop

    /// Steps the loop without sleeping until nothing is ready or pending (bounded).
    func runWhileBusy() {
        for _ in 0..<10_000 where loop.step(self, maxWaitMilliseconds: 0) {}
    }

    /// Steps the daemon's loop until `condition` holds (false when the deadline passes). Each step
    /// sleeps in epoll until a source is ready: when the engine would sleep forever, so does this.
    @discardableResult
    func run(until condition: () -> Bool, timeoutSeconds: Double = 20) -> Bool {
        let deadline = MonotonicClock.nanoseconds() + UInt64(timeoutSeconds * 1e9)
        while !condition() {
            if MonotonicClock.nanoseconds() > deadline { return false }
            loop.step(self, maxWaitMilliseconds: 20)
        }
        // Deliver what became ready meanwhile (the notification for the last responses).
        runWhileBusy()
        return true
    }

    /// One step of the loop: sleeps until a source is ready (at most 5 ms), acts only on that.
    func step() {
        loop.step(self, maxWaitMilliseconds: 5)
    }

    /// Runs until `count` responses in total have arrived.
    @discardableResult
    func run(untilResponses count: Int, timeoutSeconds: Double = 20) -> Bool {
        run(until: { responses.count >= count }, timeoutSeconds: timeoutSeconds)
    }

    /// Runs until no I/O is queued or in the kernel (held requests may remain).
    @discardableResult
    func waitQuiescent(timeoutSeconds: Double = 20) -> Bool {
        run(until: { engine.isQuiescent }, timeoutSeconds: timeoutSeconds)
    }

    /// Runs until every consumed request has been answered.
    @discardableResult
    func waitDrained(timeoutSeconds: Double = 20) -> Bool {
        run(until: { engine.isDrained }, timeoutSeconds: timeoutSeconds)
    }

    func responses(for id: UInt64) -> [FrontendRing.Response] { responses.filter { $0.id == id } }

    func status(of id: UInt64) -> Int16? {
        let r = responses(for: id)
        return r.count == 1 ? r[0].status : nil
    }

    /// Fills `bytes` of data page memory starting at `gref` with a pattern derived from `seed`.
    func fill(gref: UInt32, pages: Int = 1, seed: UInt64) {
        for p in 0..<pages {
            Pattern.fill(frontend.page(gref + UInt32(p)), bytes: RingLayout.pageSize, seed: seed &+ UInt64(p))
        }
    }

    /// Reads the image file directly (bypassing the engine) for verification.
    func readImage(offset: Int, count: Int) -> [UInt8] {
        let fd = open(imagePath, O_RDONLY)
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: count)
        let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        return n == count ? buf : []
    }

    func writeImage(offset: Int, bytes: [UInt8]) {
        let fd = open(imagePath, O_WRONLY)
        defer { close(fd) }
        _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, bytes.count, off_t(offset)) }
        fsync(fd)
    }
}

/// Deterministic byte patterns, so a read-back identifies exactly which write it came from.
enum Pattern {
    static func fill(_ p: UnsafeMutableRawPointer, bytes: Int, seed: UInt64) {
        var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        let words = p.bindMemory(to: UInt64.self, capacity: bytes / 8)
        for i in 0..<(bytes / 8) {
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            words[i] = x
        }
    }

    static func bytes(count: Int, seed: UInt64) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { fill($0.baseAddress!, bytes: count, seed: seed) }
        return out
    }
}
