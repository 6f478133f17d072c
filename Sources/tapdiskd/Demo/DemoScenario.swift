import Glibc
import Synchronization
import TapDisk

/// Set by SIGINT/SIGTERM during the demo; every wait loop checks it so cleanup always runs.
let demoInterrupted = Atomic<Bool>(false)

/// One run of the seed scenario: serve a sparse image on the tiny filesystem with a daemon child,
/// write a distinct pattern over the whole disk through the ring, and check every guarantee.
struct DemoScenario {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// What the run saw; every number is counted by the frontend itself, not taken from the daemon.
    struct Result {
        var policy: String
        var writes = 0
        /// Every state-changed event seen, in order (for the failure message).
        var states: [String] = []
        var okay = 0
        var error = 0
        var missing = 0
        var duplicates = 0
        var seconds = 0.0
        var firstIOError: JSONObject? = nil
        var ioErrorEvents = 0
        var pausedReason: String? = nil
        var operatorFreedSpace = false
        var resumedAutomatically = false
        var resubmitted: UInt64 = 0
        var statusAfter: JSONObject = [:]
        var countersAfter: JSONObject = [:]
        var verified = 0
        var intact = 0
        var daemonExit: Int32 = -1

        var lost: Int { verified - intact }
        var mib: Double { Double(writes) * Double(DemoScenario.requestBytes) / 1_048_576 }
    }

    static let pagesPerRequest = 11
    static let requestBytes = pagesPerRequest * 4096
    static let sectorsPerRequest = UInt64(pagesPerRequest * 8)

    let filesystem: DemoFilesystem
    let policy: String
    let imageMiB: Int
    /// How much of the disk the guest writes (the whole disk when nil).
    let writeMiB: Int?
    let queueDepth: Int
    let progress: DemoProgress
    /// Distinguishes this run's patterns from any earlier run's leftovers on the image.
    let runTag: UInt64

    var imagePath: String { filesystem.mountPoint + "/guest-disk.img" }
    var socketPath: String { filesystem.directory + "/\(policy).sock" }
    var logPath: String { filesystem.directory + "/tapdiskd-\(policy).log" }

    func run() throws -> Result {
        var result = Result(policy: policy)
        unlink(imagePath)
        do {
            try ImageCreator.create(path: imagePath, sizeBytes: UInt64(imageMiB) << 20, preallocation: .off)
        } catch {
            throw Failure(description: error.message)
        }
        let daemon = try DemoChild(
            [
                Self.selfExecutable, "--image", imagePath, "--socket", socketPath, "--on-nospace", policy,
                "--pause-timeout", "0", "--log-level", "notice",
            ],
            logPath: logPath)
        let toolstack = try Self.connect(socketPath, daemon: daemon)
        try toolstack.call("subscribe")
        let disk = try RemoteDisk(socketPath: socketPath, pageOrder: 4, dataPages: queueDepth * Self.pagesPerRequest)
        let acknowledged = try writeWholeDisk(disk, toolstack: toolstack, result: &result)
        result.statusAfter = try toolstack.call("status")
        _ = try disk.detach()
        result.countersAfter = try toolstack.call("stats")["counters"]?.objectValue ?? [:]
        result.resubmitted = result.countersAfter["resubmitted-requests"]?.uint64Value ?? 0
        for event in toolstack.drainQueuedEvents() { note(event, &result) }
        result.daemonExit = daemon.terminate(timeoutSeconds: 30)
        try filesystem.remount()
        try verify(&result, acknowledged: acknowledged)
        return result
    }

    static var selfExecutable: String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, 4095)
        return n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "tapdiskd"
    }

    static func connect(_ socket: String, daemon: DemoChild) throws -> ControlClient {
        for _ in 0..<500 {
            if demoInterrupted.load(ordering: .relaxed) { throw Failure(description: "interrupted") }
            if let c = try? ControlClient(socketPath: socket) { return c }
            if daemon.wait(timeoutSeconds: 0) != nil {
                throw Failure(description: "tapdiskd exited at startup")
            }
            usleep(20_000)
        }
        throw Failure(description: "tapdiskd did not start listening on \(socket)")
    }

    /// Fills 512 bytes so that a read-back names its sector and run.
    static func pattern(_ p: UnsafeMutableRawPointer, sector: UInt64, runTag: UInt64) {
        let words = p.bindMemory(to: UInt64.self, capacity: 64)
        var x = (sector &* 0x9E37_79B9_7F4A_7C15) ^ runTag | 1
        words[0] = sector
        words[1] = runTag
        for i in 2..<64 {
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            words[i] = x
        }
    }

    private struct Slot {
        var id: UInt64
        var sector: UInt64
    }

    /// Writes every sector once, `queueDepth` requests in flight, until the end of the disk.
    /// Returns the requests answered OKAY.
    private func writeWholeDisk(_ disk: RemoteDisk, toolstack: ControlClient, result: inout Result) throws -> [UInt64] {
        let wholeDisk = disk.sectors / Self.sectorsPerRequest
        let total = writeMiB.map { min(wholeDisk, UInt64($0) * 2048 / Self.sectorsPerRequest) } ?? wholeDisk
        var statuses = [Int16?](repeating: nil, count: Int(total))
        var freeSlots = Array((0..<queueDepth).reversed())
        var slotOf: [UInt64: Int] = [:]
        var next: UInt64 = 0
        var answered = 0
        let start = MonotonicClock.nanoseconds()
        var lastProgress = MonotonicClock.nanoseconds()
        var lastAnswerNanos = start
        var waitedForOperator = false
        while answered < Int(total) {
            if demoInterrupted.load(ordering: .relaxed) { throw Failure(description: "interrupted") }
            while next < total, let slot = freeSlots.popLast() {
                let sector = next * Self.sectorsPerRequest
                var segments: [BlkifSegment] = []
                for p in 0..<Self.pagesPerRequest {
                    let gref = UInt32(slot * Self.pagesPerRequest + p)
                    let page = disk.frontend.page(gref)
                    for s in 0..<8 { Self.pattern(page + s * 512, sector: sector + UInt64(p * 8 + s), runTag: runTag) }
                    segments.append(BlkifSegment(gref: gref))
                }
                disk.frontend.enqueue(BlkifRequest.write(id: next, sector: sector, segments: segments))
                slotOf[next] = slot
                next += 1
                result.writes += 1
            }
            disk.frontend.push()
            guard disk.waitForResponses(timeoutMilliseconds: 50) else { throw Failure(description: "tapdiskd died") }
            let outcome = disk.frontend.reap { r in
                guard r.id < total, let slot = slotOf.removeValue(forKey: r.id) else {
                    result.duplicates += 1
                    return
                }
                freeSlots.append(slot)
                statuses[Int(r.id)] = r.status
                answered += 1
                if r.status == 0 { result.okay += 1 } else { result.error += 1 }
                lastAnswerNanos = MonotonicClock.nanoseconds()
            }
            if outcome == .violation { throw Failure(description: "the daemon published more responses than requests") }
            while let event = try toolstack.nextEvent(timeoutMilliseconds: 0) {
                note(event, &result)
                if policy == "pause", event["event"]?.stringValue == "state-changed",
                    event["state"]?.stringValue == "paused", !waitedForOperator
                {
                    waitedForOperator = true
                    progress.finishLine()
                    progress.say(
                        "  the disk paused (reason \(event["reason"]?.stringValue ?? "?")): writes are held, nothing is answered yet"
                    )
                    let status = try toolstack.call("status")
                    progress.say(
                        "  ctl status: state \(status["state"]?.stringValue ?? "?"), io-status \(status["io-status"]?.stringValue ?? "?"), held \(status["held"]?.int64Value ?? 0)"
                    )
                    progress.say("  operator: deleting the other tenant's file that filled the host filesystem")
                    filesystem.removeFiller()
                    result.operatorFreedSpace = true
                }
                if policy == "pause", waitedForOperator, event["event"]?.stringValue == "state-changed",
                    event["state"]?.stringValue == "running"
                {
                    result.resumedAutomatically = true
                    progress.say("  the daemon saw the free space and resumed by itself; held writes were resubmitted")
                }
            }
            let now = MonotonicClock.nanoseconds()
            if now - lastProgress > 100_000_000 {
                lastProgress = now
                progress.update(result: result, totalWrites: Int(total), seconds: Double(now - start) / 1e9)
            }
            if now - lastAnswerNanos > 60_000_000_000 {
                // Say what the daemon says, so a failure here can be told apart: a lost request,
                // or a pause nobody ended.
                let status = (try? toolstack.call("status")).map { "\($0)" } ?? "(no status)"
                let counters = (try? toolstack.call("stats"))?["counters"].map { "\($0)" } ?? "(no stats)"
                throw Failure(
                    description:
                        "no response for 60 s with \(slotOf.count) writes outstanding (policy \(policy), states \(result.states.joined(separator: " -> "))); status \(status); counters \(counters)"
                )
            }
        }
        result.seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
        progress.update(result: result, totalWrites: Int(total), seconds: result.seconds)
        progress.finishLine()
        result.missing = statuses.filter { $0 == nil }.count
        return statuses.enumerated().compactMap { $0.element == 0 ? UInt64($0.offset) : nil }
    }

    /// Reads every write answered OKAY back from the image (after the remount).
    private func verify(_ result: inout Result, acknowledged: [UInt64]) throws {
        let fd = open(imagePath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(description: "cannot open \(imagePath) after remount: \(Errno.current)") }
        defer { close(fd) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: Self.requestBytes, alignment: 4096)
        let expected = UnsafeMutableRawPointer.allocate(byteCount: 512, alignment: 8)
        defer {
            buffer.deallocate()
            expected.deallocate()
        }
        for request in acknowledged {
            result.verified += 1
            let sector = request * Self.sectorsPerRequest
            let n = pread(fd, buffer, Self.requestBytes, off_t(sector * 512))
            guard n == Self.requestBytes else { continue }
            var ok = true
            for s in 0..<Int(Self.sectorsPerRequest) {
                Self.pattern(expected, sector: sector + UInt64(s), runTag: runTag)
                if memcmp(buffer + s * 512, expected, 512) != 0 {
                    ok = false
                    break
                }
            }
            if ok { result.intact += 1 }
        }
    }

    private func note(_ event: JSONObject, _ result: inout Result) {
        switch event["event"]?.stringValue {
        case "io-error":
            result.ioErrorEvents += 1
            if result.firstIOError == nil { result.firstIOError = event }
        case "state-changed":
            if event["state"]?.stringValue == "paused" { result.pausedReason = event["reason"]?.stringValue }
            result.states.append(
                (event["state"]?.stringValue ?? "?") + (event["reason"]?.stringValue.map { "(\($0))" } ?? ""))
        default: break
        }
    }
}
