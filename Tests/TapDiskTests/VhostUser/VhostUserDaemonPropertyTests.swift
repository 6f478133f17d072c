import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The virtqueue twin of `DaemonPropertyTests`: the real `tapdiskd --vhost-user-blk` process under
/// random AIO faults (`TAPDISK_FAULTS=random:…`, debug builds) against a random, pipelined stream
/// of chains (`VhostUserPropertyRun`) posted the way a guest driver posts them
/// (`VhostUserChainDriver`: EVENT_IDX kicks and interrupts, direct and indirect chains), checked
/// against a shadow model of the disk. Every posted head gets exactly one used entry with an
/// allowed status byte and the right length, every OK READ returns what the model says, every OK
/// WRITE is in the image after the daemon exits, and the counters account for every chain.
@Suite(.serialized, .timeLimit(.minutes(4))) struct VhostUserDaemonPropertyTests {
    static let imageBytes = 4 << 20
    /// The first MiB of the image holds `VhostUserTestDaemon.pattern`, the rest is a hole.
    static let patternBytes = 1 << 20
    static let total = 2500

    struct Case: CustomTestStringConvertible, Sendable {
        var seed: UInt64
        var policy: String
        var pollUs: Int
        var roundsPerService: Int? = nil
        var queueSize = 128
        /// avail->idx and used->idx at set-up (near 65535: the run crosses their wrap).
        var startIndex: UInt16 = 0
        /// `--limit` (issue 17 §2), or none.
        var limit: String? = nil
        var testDescription: String {
            (limit.map { "limit \($0), " } ?? "")
                + "seed 0x\(String(seed, radix: 16)), \(policy), poll \(pollUs) µs, queue \(queueSize)\(startIndex == 0 ? "" : " from index \(startIndex)")\(roundsPerService.map { ", \($0) round per service" } ?? "")"
        }
        var arguments: [String] {
            let pause = ["--on-nospace", "pause", "--on-error", "pause", "--pause-timeout", "0"]
            return (policy == "pause" ? pause : ["--on-nospace", "report"]) + ["--poll-us", "\(pollUs)"]
                + (limit.map { ["--limit", $0] } ?? [])
        }
    }

    static let cases = [
        Case(seed: 0x5eed_0001, policy: "report", pollUs: 0),
        Case(seed: 0x5eed_0002, policy: "pause", pollUs: 0),
        Case(seed: 0x5eed_0003, policy: "report", pollUs: 50, queueSize: 256, startIndex: 0xFFFF - 1199),
        Case(seed: 0x5eed_0004, policy: "pause", pollUs: 50, startIndex: 0xFFFF - 1499),
        Case(seed: 0x5eed_0005, policy: "pause", pollUs: 0, roundsPerService: 1, queueSize: 64),
        Case(seed: 0x5eed_0006, policy: "report", pollUs: 50, roundsPerService: 1, queueSize: 256),
        Case(seed: 0x5eed_0007, policy: "report", pollUs: 0, queueSize: 64, startIndex: 0xFFFF - 699),
        Case(seed: 0x5eed_0008, policy: "pause", pollUs: 50, queueSize: 256),
        Case(seed: 0x5eed_0009, policy: "pause", pollUs: 0, limit: "iops-read=150,iops-write=150,bps-total=4M"),
    ]

    /// The image with its first MiB patterned, and the model of it.
    static func makeImage() throws -> (String, [VhostUserPropertyRun.Expect]) {
        let path = try DaemonTest.image(bytes: imageBytes)
        let data = (0..<patternBytes).map(VhostUserTestDaemon.pattern)
        let fd = open(path, O_WRONLY)
        defer { close(fd) }
        let n = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        guard n == patternBytes else { throw Errno.current }
        let patterned = VhostUserPropertyRun.hashes(data).map { VhostUserPropertyRun.Expect.content($0) }
        let zeros = [VhostUserPropertyRun.Expect](repeating: .zeros, count: (imageBytes - patternBytes) / 512)
        return (path, patterned + zeros)
    }

    /// One `scripts/soak.sh` iteration: the seed picks the policy, polling, queue size, round
    /// limit and starting ring index too.
    @Test(Soak.enabled) func soakIteration() throws {
        let seed = try #require(Soak.seed)
        let c = Case(
            seed: seed, policy: seed & 1 == 0 ? "report" : "pause", pollUs: seed & 2 == 0 ? 0 : 50,
            roundsPerService: (seed >> 2) % 4 == 0 ? 1 : nil, queueSize: [64, 128, 256][Int((seed >> 4) % 3)],
            startIndex: (seed >> 6) & 1 == 0 ? 0 : 0xFFFF - UInt16((seed >> 7) % 2000))
        print("vhost-user soak seed \(seed): \(c.testDescription)")
        try randomChainsAgainstShadowModel(c)
    }

    @Test(arguments: cases) func randomChainsAgainstShadowModel(_ c: Case) throws {
        var environment = ProcessInfo.processInfo.environment
        environment["TAPDISK_FAULTS"] =
            "random:\(c.seed):eio=20:short=30:enospc=20:eagain=20:partial=20:zero=10:sync=10"
        if let r = c.roundsPerService { environment["TAPDISK_ROUNDS_PER_SERVICE"] = "\(r)" }
        let (image, initial) = try Self.makeImage()
        defer { unlink(image) }
        let directory = DaemonProcess.makeDirectory()
        let vhostSocket = directory + "/vhost.sock"
        let daemon = try DaemonProcess(
            image: image, arguments: ["--vhost-user-blk", vhostSocket] + c.arguments, directory: directory,
            environment: environment)
        defer { daemon.forceStop() }
        let control = try daemon.client()
        let frontend = try VhostUserTestFrontend(socketPath: vhostSocket, queueSize: c.queueSize)
        frontend.extraFeatures = VirtioFeatures.blkDiscard | VirtioFeatures.blkWriteZeroes
        try frontend.negotiate()
        let config = try VhostUserChainDriver.readConfig(frontend)
        try #require(frontend.features & VirtioFeatures.blkDiscard != 0, "DISCARD not offered")
        try #require(config.capacity == UInt64(Self.imageBytes / 512))
        try frontend.setUpMemory()
        try frontend.setUpRing(startingAt: c.startIndex)
        let driver = VhostUserChainDriver(frontend)
        let run = VhostUserPropertyRun(
            driver: driver, capacity: Self.imageBytes / 512, blockSize: Int(config.blockSize),
            maxRangeSectors: Int(min(config.maxDiscard, config.maxWriteZeroes)), seed: c.seed, initial: initial)

        var rng = SplitMix(seed: c.seed ^ 0xface)
        var sent = 0
        var reaped = 0
        var resumes = 0
        var quietWaits = 0
        var lateInterrupts = 0
        var latestInterrupt: UInt64 = 0
        var deepest = 0
        var lastProgress = MonotonicClock.nanoseconds()
        let started = lastProgress
        while run.answered < Self.total {
            let depth = 1 + Int(rng.next() % UInt64(c.queueSize))
            // 0: a kick decision after every chain; 1: one per batch; 2: one per batch and a
            // spurious kick; 3: one per batch after an idle gap.
            let kicking = rng.next() % 4
            // A third of the rounds post every chain indirect, so the pipeline can fill the queue
            // (a direct chain takes up to 9 descriptors of the table).
            run.allIndirect = rng.next() % 3 == 0
            var produced = 0
            var misses = 0
            while sent < Self.total && run.pending.count < depth && driver.freeDescriptorCount > 0 && misses < 32 {
                // nil: the sectors it drew are busy, or the ring or data memory is full.
                guard let p = run.next(number: sent + 1) else {
                    misses += 1
                    continue
                }
                driver.publish(p.chain.head)
                sent += 1
                produced += 1
                deepest = max(deepest, run.pending.count)
                if kicking == 0 { driver.kickIfNeeded() }
            }
            if kicking == 3 { usleep(UInt32(rng.next() % 2000)) }
            if produced > 0 && kicking != 0 { driver.kickIfNeeded(force: kicking == 2) }
            if run.pending.isEmpty { continue }  // the sectors it drew were busy: draw again
            var timedOut = false
            let usedEvent = frontend.seenUsed
            if frontend.collect() == 0 {
                guard daemon.process.isRunning else {
                    Issue.record("the daemon died: \(daemon.log.suffix(3000))")
                    return
                }
                timedOut = driver.waitForInterrupt(milliseconds: 50)
            }
            frontend.collect()
            let got = frontend.used.count - reaped
            while reaped < frontend.used.count {
                run.absorb(id: frontend.used[reaped].id, length: frontend.used[reaped].length)
                reaped += 1
            }
            if timedOut {
                quietWaits += 1
                // Used entries past used_event and no interrupt within 50 ms: late or never sent.
                // The daemon signals at the end of a service round, after the round's consume and
                // submit (synchronous fallocates included), so late happens; 2 s more tells the
                // two apart, because nothing but this window's notification can fire it now.
                if got > 0 {
                    let waited = MonotonicClock.nanoseconds()
                    let arrived = driver.interruptArrives(milliseconds: 2000)
                    lateInterrupts += 1
                    latestInterrupt = max(latestInterrupt, 50 + (MonotonicClock.nanoseconds() - waited) / 1_000_000)
                    #expect(
                        arrived,
                        "seed \(c.seed): used->idx passed used_event \(usedEvent) (now \(frontend.seenUsed)) and no interrupt came"
                    )
                }
            }
            let now = MonotonicClock.nanoseconds()
            if got > 0 {
                lastProgress = now
                continue
            }
            guard now - lastProgress > 100_000_000 else { continue }
            // No answer for 0.1 s with chains outstanding (posting more does not count: a paused
            // daemon leaves them in the ring): legitimate only while paused.
            let status = try control.call("status")
            if status["state"]?.stringValue == "paused" {
                if try DaemonTest.resumeIfStillPaused(control, failHeld: rng.next() % 4 == 0) { resumes += 1 }
                lastProgress = now
            } else if now - lastProgress > 10_000_000_000 {
                Issue.record(
                    "seed \(c.seed): \(run.pending.count) chains unanswered for 10 s (\(run.pendingSummary)); used->idx \(frontend.ring.usedIndex), avail->idx \(frontend.ring.availableIndex), status \(status)"
                )
                return
            }
        }
        let seconds = Double(MonotonicClock.nanoseconds() - started) / 1e9
        #expect(frontend.usedOnceSettled(daemon) == 0, "used entries after every head was answered")
        #expect(frontend.overAnswered.isEmpty, "heads answered twice: \(frontend.overAnswered)")
        let stats = try DaemonTest.stats(control)
        try expectReconciled(stats, run)
        if c.limit != nil {
            let delayed = try control.call("stats")["counters"]?["throttle-delayed-requests"]?.uint64Value
            #expect((delayed ?? 0) > 0, "the limit never held a chain back")
        }

        // The daemon drains, goes idle and exits; then the image must hold every OK WRITE.
        frontend.disconnect()
        #expect(DaemonTest.waitUntil { (try? control.call("status"))?["state"]?.stringValue == "idle" })
        #expect(daemon.terminate() == 0, "exit status; log: \(daemon.log.suffix(2000))")
        let mismatches = run.imageMismatches(path: image)
        #expect(mismatches.isEmpty, "seed \(c.seed): image sectors differ from the model: \(mismatches.prefix(16))")

        let undefined = run.model.filter { $0 == .undefined }.count
        print(
            "vhost-user property \(c.testDescription): \(Self.total) chains in \(String(format: "%.1f", seconds)) s (up to \(deepest) in flight), \(run.okWrites) OK writes, \(run.okReads) OK reads (\(run.checkedSectors) sectors checked), errors \(stats["responses-error"]) (\(run.failedWrites) writes, \(run.failedFlushes) flushes, \(stats["invalid-requests"]) invalid), unsupp \(stats["responses-eopnotsupp"]), short \(stats["short-completions"]), resubmitted \(stats["resubmitted-requests"]), pauses resumed \(resumes), indirect \(run.indirect), misaligned \(run.misaligned), kicks \(driver.kicks) (\(driver.skippedKicks) not needed), quiet waits \(quietWaits), late interrupts \(lateInterrupts) (latest after \(latestInterrupt) ms), image sectors checked \(run.capacity - undefined)"
        )
        #expect(run.okWrites > 200 && run.okReads > 200)
        #expect(stats["responses-error"] > stats["invalid-requests"])
        #expect(stats["short-completions"] > 10)
        if c.policy == "pause" { #expect(stats["resubmitted-requests"] > 0 && resumes > 0) }
        #expect(run.indirect > 400 && run.misaligned > 50 && deepest > c.queueSize / 2)
    }

    /// The counters against what was posted and answered: nothing in flight or held; requests
    /// counted by type (WRITE_ZEROES as a discard); rejected chains as invalid or unsupported;
    /// responses by status byte; GET_IDs in `id-requests`; and responses = consumed requests
    /// (docs/protocol.md §8).
    func expectReconciled(_ stats: DaemonTest.Counters, _ run: VhostUserPropertyRun) throws {
        let posted = run.posted
        let statuses = run.statuses
        #expect(stats["in-flight"] == 0 && stats["held"] == 0)
        #expect(stats["read-requests"] == UInt64(posted[.read, default: 0]))
        #expect(stats["write-requests"] == UInt64(posted[.write, default: 0]))
        #expect(stats["flush-requests"] == UInt64(posted[.flush, default: 0]))
        #expect(stats["barrier-requests"] == 0)
        #expect(
            stats["discard-requests"] == UInt64(posted[.discard, default: 0] + posted[.writeZeroes, default: 0]))
        #expect(stats["invalid-requests"] == UInt64(posted[.beyondCapacity, default: 0]))
        #expect(stats["unsupported-requests"] == UInt64(posted[.unsupported, default: 0]))
        #expect(stats["responses-okay"] == UInt64(statuses[VirtioBlkStatus.ok.rawValue, default: 0]))
        #expect(stats["responses-error"] == UInt64(statuses[VirtioBlkStatus.ioError.rawValue, default: 0]))
        #expect(stats["responses-eopnotsupp"] == UInt64(statuses[VirtioBlkStatus.unsupported.rawValue, default: 0]))
        #expect(stats["id-requests"] == UInt64(posted[.getID, default: 0]))
        #expect(stats.responses == stats.consumed)
        #expect(stats.responses == UInt64(Self.total))
    }
}
