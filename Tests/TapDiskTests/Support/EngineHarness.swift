import CLibAIO
import Glibc

@testable import TapDisk

/// An engine and a frontend over one memfd in this process, driven single-threaded: the test
/// plays the frontend, then runs the engine's event-loop entry points until responses arrive.
final class EngineHarness {
    let engine: Engine
    let frontend: BlockFrontend
    let imagePath: String
    private let ownsImage: Bool
    /// Every response, in arrival order.
    private(set) var responses: [FrontendRing.Response] = []
    private(set) var events: [EngineEvent] = []
    var violations = 0

    init(
        imageBytes: Int = 8 << 20, imagePath: String? = nil, cache: CacheMode = .none, readOnly: Bool = false,
        policy: FailurePolicy = FailurePolicy(), pageOrder: Int = 2, dataPages: Int = 512, startIndex: UInt32 = 0,
        attach: Bool = true
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
        frontend = try BlockFrontend(pageOrder: pageOrder, dataPages: dataPages, startIndex: startIndex)
        engine.onEvent = { [weak self] in self?.events.append($0) }
        if attach { try engine.attach(frontend.makeAttachment()) }
    }

    deinit {
        if engine.isAttached {
            engine.beginDetach()
            _ = waitDrained()
            _ = engine.finishDetach()
        }
        if ownsImage { unlink(imagePath) }
    }

    static func makeTemporaryImage(bytes: Int, directory: String = "/var/tmp") throws -> String {
        var template = Array("\(directory)/tapdisk-test-XXXXXX.img".utf8CString)
        let fd = mkstemps(&template, 4)
        guard fd >= 0 else { throw Errno.current }
        defer { close(fd) }
        guard ftruncate(fd, off_t(bytes)) == 0 else { throw Errno.current }
        return String(cString: template)
    }

    /// Enqueues and publishes requests, then lets the engine react to the kick.
    func submit(_ requests: [clibaio_blkif_request]) {
        for r in requests { frontend.enqueue(r) }
        frontend.push()
        engine.handleKick()
        collect()
    }

    func collect() {
        let next = frontend.reap { responses.append($0) }
        if next == .violation { violations += 1 }
    }

    /// Runs the engine's event loop until `condition` holds (false when the deadline passes).
    @discardableResult
    func run(until condition: () -> Bool, timeoutSeconds: Double = 20) -> Bool {
        let deadline = MonotonicClock.nanoseconds() + UInt64(timeoutSeconds * 1e9)
        while !condition() {
            if MonotonicClock.nanoseconds() > deadline { return false }
            step()
        }
        collect()
        return true
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

    /// One event-loop iteration: wait briefly for completions, then service.
    func step() {
        var p = pollfd(fd: engine.completionFD, events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, engine.submitBackoff ? 1 : 5)
        engine.handleCompletions()
        collect()
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
