import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// Real ENOSPC (docs/protocol.md §6): a 64 MiB sparse image on a 16 MiB ext4 loop filesystem that is
/// nearly full, served by the real binary. Every policy path is checked through events,
/// `status`, `stats`, the responses the frontend sees, and the bytes on disk after a remount.
@Suite(.serialized, .enabled(if: LoopFilesystem.isRoot, "needs root for mount/losetup"))
struct DaemonENOSPCTests {
    /// 48 writes of 44 KiB (11 pages each, every write its own pages and pattern) into about
    /// 1 MiB of free space: roughly half of them cannot be stored.
    static let writes = 48
    static let pagesPerWrite = 11
    static let sectorsPerWrite = UInt64(pagesPerWrite * 8)

    final class Rig: ENOSPCDaemonRig {
        init(arguments: [String]) throws {
            // About 1 MiB left free: roughly half of the 48 writes cannot be stored.
            try super.init(
                arguments: arguments, pageOrder: 4,
                dataPages: DaemonENOSPCTests.writes * DaemonENOSPCTests.pagesPerWrite
            ) { fs in try fs.fill(leaving: 1 << 20) }
        }

        static func sector(_ i: Int) -> UInt64 { UInt64(i) * DaemonENOSPCTests.sectorsPerWrite }
        static func seed(_ i: Int) -> UInt64 { 0x5EED_0000 + UInt64(i) * 64 }

        func publishAllWrites() {
            for i in 0..<DaemonENOSPCTests.writes {
                driver.enqueueWrite(
                    id: UInt64(i), sector: Self.sector(i), gref: UInt32(i * DaemonENOSPCTests.pagesPerWrite),
                    pages: DaemonENOSPCTests.pagesPerWrite, seed: Self.seed(i))
            }
            driver.push()
        }

        func ids(withStatus status: Int16) -> [Int] {
            (0..<DaemonENOSPCTests.writes).filter { driver.status(UInt64($0)) == status }
        }

        /// Detach, SIGTERM (exit 0), remount, then compare every OKAY write with its pattern.
        func verifyOkayWritesAfterRemount(sourceLocation: SourceLocation = #_sourceLocation) throws {
            _ = try driver.disk.detach()
            #expect(daemon.terminate() == 0, sourceLocation: sourceLocation)
            try fs.remount()
            let fd = open(image, O_RDONLY)
            #expect(fd >= 0, sourceLocation: sourceLocation)
            defer { close(fd) }
            let bytes = DaemonENOSPCTests.pagesPerWrite * 4096
            var buf = [UInt8](repeating: 0, count: bytes)
            for i in ids(withStatus: 0) {
                #expect(pread(fd, &buf, bytes, off_t(Self.sector(i) * 512)) == bytes, sourceLocation: sourceLocation)
                var expected = [UInt8]()
                for p in 0..<DaemonENOSPCTests.pagesPerWrite {
                    expected += Pattern.bytes(count: 4096, seed: Self.seed(i) &+ UInt64(p))
                }
                #expect(
                    buf == expected, "write \(i) was answered OKAY but its data is not on disk",
                    sourceLocation: sourceLocation)
            }
        }

        /// Waits out the first second of a nospace pause, then until it is paused with nothing in
        /// flight. (On ext4 free space can rise by itself just after the first failure, while
        /// the other in-flight writes fail and give back their reservations. Auto-resume waits for
        /// room for the held writes on top of the sample, which removed the spurious resumes seen
        /// before (1 run in 4); tests that act on held requests still wait until a pause has settled.)
        func waitSettledPause(pausedAt: UInt64) throws -> JSONObject {
            let settle = pausedAt + 1_200_000_000
            let now = MonotonicClock.nanoseconds()
            if now < settle { usleep(UInt32((settle - now) / 1000)) }
            var last = JSONObject()
            #expect(
                try DaemonTest.waitUntil(seconds: 20) {
                    last = try watcher.call("status")
                    return last["in-flight"]?.int64Value == 0 && last["state"] == .string("paused")
                })
            return last
        }

        /// Waits until nothing is in flight (held requests stay).
        func waitQuiescent() throws -> JSONObject {
            var last = JSONObject()
            #expect(
                try DaemonTest.waitUntil(seconds: 20) {
                    last = try watcher.call("status")
                    return last["in-flight"]?.int64Value == 0
                })
            return last
        }
    }

    static func expectNospaceEvent(_ e: JSONObject?, action: String, failedSectors: Set<UInt64>? = nil) {
        #expect(e?["operation"] == .string("write"))
        #expect(e?["errno"] == .string("ENOSPC"))
        #expect(e?["errno-value"]?.numberValue?.text == "28")
        #expect(e?["nospace"] == .bool(true))
        #expect(e?["action"] == .string(action))
        #expect(e?["suppressed"]?.numberValue?.isInteger == true)
        let sector = e?["sector"]?.uint64Value
        #expect(
            sector != nil && sector! % DaemonENOSPCTests.sectorsPerWrite == 0
                && sector! < Rig.sector(DaemonENOSPCTests.writes))
        if let failedSectors, let sector { #expect(failedSectors.contains(sector)) }
    }

    /// The report and pause tests run with and without a QoS limit that holds the writes back
    /// (issue 17 §2): ENOSPC, pause and events must behave exactly as without one.
    static let limits: [[String]] = [[], ["--limit", "iops-total=100,bps-total=4M"]]

    /// A limited run's limit did hold writes back (otherwise it proved nothing).
    static func expectLimitHeld(_ rig: Rig, _ limit: [String]) throws {
        guard !limit.isEmpty else { return }
        let delayed = try rig.watcher.call("stats")["counters"]?["throttle-delayed-requests"]?.uint64Value
        #expect((delayed ?? 0) > 0, "the limit never held a write back")
    }

    @Test(arguments: limits) func reportAnswersErrorRaisesTheEventAndSetsIOStatus(limit: [String]) throws {
        let rig = try Rig(arguments: ["--on-nospace", "report"] + limit)
        defer { rig.teardown() }
        let space = try #require(try rig.watcher.call("status")["image-space"]?.objectValue)
        let apparent = try #require(space["apparent-bytes"]?.uint64Value)
        let allocated = try #require(space["allocated-bytes"]?.uint64Value)
        let free = try #require(space["fs-free-bytes"]?.uint64Value)
        #expect(apparent == 64 << 20)
        #expect(
            space["overcommit-bytes"]?.uint64Value == apparent - allocated - free,
            "64 MiB sparse on a nearly full 16 MiB filesystem")

        rig.publishAllWrites()
        #expect(rig.driver.wait(forResponses: Self.writes, seconds: 30))
        let okay = rig.ids(withStatus: 0)
        let failed = rig.ids(withStatus: -1)
        #expect(okay.count + failed.count == Self.writes)
        #expect(!failed.isEmpty && !okay.isEmpty, "okay \(okay.count) failed \(failed.count)")

        let event = try DaemonTest.nextEvent(rig.watcher, named: "io-error")
        Self.expectNospaceEvent(event, action: "report", failedSectors: Set(failed.map { Rig.sector($0) }))
        let s = try rig.watcher.call("status")
        #expect(s["io-status"] == .string("nospace"))
        #expect(s["state"] == .string("running") && s["reason"] == .null && s["held"]?.int64Value == 0)
        let c = try DaemonTest.expectInvariant(rig.watcher)
        #expect(c["write-requests"] == UInt64(Self.writes))
        #expect(c["write-errors"] == UInt64(failed.count) && c["nospace-errors"] == UInt64(failed.count))
        #expect(c["responses-error"] == UInt64(failed.count) && c["responses-okay"] == UInt64(okay.count))
        #expect(c["write-bytes"] == UInt64(okay.count * Self.pagesPerWrite * 4096))
        // No pause under `report`.
        var events = try DaemonTest.eventsBeforeReply(rig.watcher)
        #expect(!events.contains { $0["event"] == .string("state-changed") })

        // Rate limiting (§7): the first event of its kind suppressed nothing, and once one more
        // failure comes after the window, every failure is accounted for: each event stands for
        // itself plus the `suppressed` it reports.
        #expect(event?["suppressed"]?.uint64Value == 0, "the first io-error event suppressed nothing")
        usleep(1_100_000)
        // ENOSPC depends on the request size (smaller writes can still succeed after larger ones
        // failed): retry failed writes, whole, until one fails again.
        var retried = 0
        var failedAgain = false
        for (n, i) in failed.prefix(20).enumerated() where !failedAgain {
            let id = 0xFFFF_0000 + UInt64(n)
            rig.driver.enqueueWrite(id: id, sector: Rig.sector(i), gref: 0, pages: Self.pagesPerWrite, seed: 1)
            rig.driver.push()
            retried += 1
            #expect(rig.driver.wait(forResponses: Self.writes + retried, seconds: 10))
            failedAgain = rig.driver.status(id) == -1
        }
        #expect(failedAgain, "no retried write failed: the filesystem is no longer full")
        events += try DaemonTest.eventsBeforeReply(rig.watcher)
        let nospace =
            [event].compactMap { $0 }
            + events.filter {
                $0["event"] == .string("io-error") && $0["errno"] == .string("ENOSPC")
            }
        let accounted = nospace.reduce(UInt64(0)) { $0 + 1 + ($1["suppressed"]?.uint64Value ?? 0) }
        let after = try DaemonTest.stats(rig.watcher)
        #expect(
            accounted == after["nospace-errors"],
            "events + suppressed = \(accounted), errors \(after["nospace-errors"])")
        #expect(nospace.count < failed.count, "events were rate-limited")
        try Self.expectLimitHeld(rig, limit)
        try rig.verifyOkayWritesAfterRemount()
    }

    @Test(arguments: limits) func pauseHoldsWritesAndResumesByItselfWhenSpaceReturns(limit: [String]) throws {
        let rig = try Rig(arguments: ["--on-nospace", "pause", "--pause-timeout", "0"] + limit)
        defer { rig.teardown() }
        rig.publishAllWrites()
        var skipped: [JSONObject] = []
        let paused = try DaemonTest.nextEvent(rig.watcher, named: "state-changed", seconds: 30, skipped: &skipped)
        #expect(paused?["state"] == .string("paused") && paused?["reason"] == .string("nospace"))
        let ioError = skipped.first { $0["event"] == .string("io-error") }
        Self.expectNospaceEvent(ioError, action: "pause")
        let s = try rig.waitSettledPause(pausedAt: MonotonicClock.nanoseconds())
        #expect(
            s["state"] == .string("paused") && s["reason"] == .string("nospace") && s["io-status"] == .string("nospace")
        )
        let held = try #require(s["held"]?.int64Value)
        #expect(held > 0)
        let before = try DaemonTest.expectInvariant(rig.watcher)
        #expect(before["held"] == UInt64(held))
        // Held requests are not answered while paused.
        rig.driver.collect()
        #expect(Int64(Self.writes - rig.driver.responseCount) >= held)
        #expect(rig.ids(withStatus: -1).isEmpty, "nothing is answered ERROR under pause")
        _ = try DaemonTest.eventsBeforeReply(rig.watcher)  // the pause so far
        #expect(rig.driver.responsesDuring(milliseconds: 600) == 0, "held writes stay held without new space")
        let meanwhile = try DaemonTest.eventsBeforeReply(rig.watcher)
        #expect(
            meanwhile.allSatisfy { $0["event"] != .string("state-changed") },
            "no auto-resume without new space: \(meanwhile)")
        #expect(try rig.watcher.call("status")["state"] == .string("paused"))

        rig.fs.removeFiller()
        let resumed = try DaemonTest.nextEvent(rig.watcher, named: "state-changed", seconds: 10)
        #expect(resumed?["state"] == .string("running") && resumed?["reason"] == .null, "auto-resume")
        #expect(rig.driver.wait(forResponses: Self.writes, seconds: 30))
        #expect(rig.ids(withStatus: 0).count == Self.writes, "every held write was answered OKAY after resubmission")
        let s2 = try rig.watcher.call("status")
        #expect(s2["state"] == .string("running") && s2["io-status"] == .string("ok") && s2["held"]?.int64Value == 0)
        let c = try DaemonTest.expectInvariant(rig.watcher)
        #expect(c["resubmitted-requests"] >= UInt64(held))
        #expect(c["write-errors"] == c["nospace-errors"] && c["write-errors"] >= UInt64(held))
        #expect(c["responses-okay"] == UInt64(Self.writes) && c["responses-error"] == 0)
        try Self.expectLimitHeld(rig, limit)
        try rig.verifyOkayWritesAfterRemount()
    }

    @Test func pauseTimeoutAnswersHeldWritesErrorAndReturnsToRunning() throws {
        let rig = try Rig(arguments: ["--on-nospace", "pause", "--pause-timeout", "2"])
        defer { rig.teardown() }
        rig.publishAllWrites()
        // Every state change with its arrival time, until every write is answered.
        var changes: [(state: String, reason: JSONValue?, at: UInt64)] = []
        let deadline = MonotonicClock.nanoseconds() + 30_000_000_000
        while rig.driver.responseCount < Self.writes && MonotonicClock.nanoseconds() < deadline {
            if let e = try rig.watcher.nextEvent(timeoutMilliseconds: 20), e["event"] == .string("state-changed") {
                changes.append((e["state"]?.stringValue ?? "?", e["reason"], MonotonicClock.nanoseconds()))
            }
            rig.driver.collect()
        }
        #expect(rig.driver.responseCount == Self.writes)
        // The pause that ended in the timeout: the last paused → running pair.
        let lastRunning = try #require(changes.lastIndex { $0.state == "running" })
        #expect(
            lastRunning > 0 && changes[lastRunning - 1].state == "paused"
                && changes[lastRunning - 1].reason == .string("nospace"))
        let elapsed = Double(changes[lastRunning].at - changes[lastRunning - 1].at) / 1e9
        #expect(elapsed > 1.4 && elapsed < 4, "timeout after \(elapsed) s: \(changes.map(\.state))")
        let failed = rig.ids(withStatus: -1)
        #expect(!failed.isEmpty && rig.ids(withStatus: 0).count + failed.count == Self.writes)
        let s2 = try rig.watcher.call("status")
        #expect(s2["state"] == .string("running") && s2["held"]?.int64Value == 0 && s2["reason"] == .null)
        #expect(s2["io-status"] == .string("nospace"), "io-status stays until a resume")
        let c = try DaemonTest.expectInvariant(rig.watcher)
        #expect(c["responses-error"] == UInt64(failed.count))
        // Each failed attempt counts once; the timeout itself is no new attempt.
        #expect(c["write-errors"] == UInt64(failed.count) + c["resubmitted-requests"])
        #expect(c["nospace-errors"] == c["write-errors"])
        // Running again: new writes are served once there is space.
        rig.fs.removeFiller()
        #expect(rig.driver.roundTrip(sector: 100_000, seed: 7, writeGref: 0, readGref: 11))
        try rig.verifyOkayWritesAfterRemount()
    }

    /// `tapdiskd ctl resume --fail-held` (the real binary): held writes are answered ERROR.
    @Test func ctlResumeFailHeldAnswersHeldWritesError() throws {
        let rig = try Rig(arguments: ["--on-nospace", "pause", "--pause-timeout", "0"])
        defer { rig.teardown() }
        rig.publishAllWrites()
        let paused = try DaemonTest.nextEvent(rig.watcher, named: "state-changed", seconds: 30)
        #expect(paused?["reason"] == .string("nospace"))
        let s = try rig.waitSettledPause(pausedAt: MonotonicClock.nanoseconds())
        let held = try #require(s["held"]?.int64Value)
        #expect(held > 0)

        let status = try Tapdiskd.run(["ctl", "--socket", rig.daemon.socketPath, "status"])
        let lines = Set(status.stdout.split(separator: "\n").map(String.init))
        #expect(lines.contains("state: paused") && lines.contains("reason: nospace") && lines.contains("held: \(held)"))
        #expect(lines.contains("io-status: nospace"))

        // An operator pause on top of a nospace pause: ok, reason unchanged.
        let pause = try Tapdiskd.run(["ctl", "--socket", rig.daemon.socketPath, "pause"])
        #expect(pause.status == 0)
        #expect(try rig.watcher.call("status")["reason"] == .string("nospace"))

        let run = try Tapdiskd.run(["ctl", "--socket", rig.daemon.socketPath, "resume", "--fail-held", "--json"])
        #expect(run.status == 0)
        let reply = try JSONParser.parse(run.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(reply["ok"] == .bool(true))
        #expect(reply["failed"]?.int64Value == held && reply["resubmitted"]?.int64Value == 0)
        #expect(rig.driver.wait(forResponses: Self.writes))
        #expect(rig.ids(withStatus: -1).count == Int(held))
        let s2 = try rig.watcher.call("status")
        #expect(s2["state"] == .string("running") && s2["io-status"] == .string("ok") && s2["held"]?.int64Value == 0)
        let c = try DaemonTest.expectInvariant(rig.watcher)
        #expect(c["responses-error"] == UInt64(held))
        // fail-held is no new attempt: every failed attempt was a first one or a resubmission.
        #expect(c["write-errors"] == UInt64(held) + c["resubmitted-requests"])
        try rig.verifyOkayWritesAfterRemount()
    }

    /// SIGTERM while writes are held: they are answered ERROR, the daemon exits 0.
    @Test func sigtermWhileHoldingAnswersHeldWritesErrorAndExitsZero() throws {
        let rig = try Rig(arguments: ["--on-nospace", "pause", "--pause-timeout", "0"])
        defer { rig.teardown() }
        rig.publishAllWrites()
        _ = try DaemonTest.nextEvent(rig.watcher, named: "state-changed", seconds: 30)
        let held = try #require(try rig.waitSettledPause(pausedAt: MonotonicClock.nanoseconds())["held"]?.int64Value)
        #expect(held > 0)
        // SIGTERM while paused with held writes: they are answered ERROR, exit 0.
        rig.daemon.signal(SIGTERM)
        #expect(rig.daemon.waitForExit(timeoutSeconds: 20) == 0)
        #expect(rig.driver.wait(forResponses: Self.writes))
        #expect(rig.ids(withStatus: -1).count == Int(held))
        #expect(!FileManager.default.fileExists(atPath: rig.daemon.socketPath))
    }
}
