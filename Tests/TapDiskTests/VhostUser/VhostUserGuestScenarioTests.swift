import Foundation
import Glibc
import Testing

@testable import TapDisk

/// Guest scenarios: the REAL daemon (`tapdiskd --vhost-user-blk`, the same engine as
/// its blkif ring) serving a real Linux guest under QEMU, judged by what the guest saw, what the
/// daemon counted and what is in the image afterwards. `VhostUserQEMUTests` proves the protocol
/// layers with an in-test server; this suite proves the daemon end to end, and in particular the
/// 2006 seed bug (Red Hat bug 217859, docs/protocol.md): a sparse image on a host filesystem that runs
/// out must never tell the guest a write succeeded when it did not.
///
/// Needs root (loop mounts), qemu-system-x86_64 and the cached guest (`scripts/guest.sh build`);
/// skipped otherwise. Each scenario prints a one-line summary with its numbers.
@Suite(
    .serialized,
    .enabled(
        if: VhostUserGuest.available && LoopFilesystem.isRoot,
        "needs root (loop mounts), qemu-system-x86_64 and `scripts/guest.sh build`"))
struct VhostUserGuestScenarioTests {
    private static func now() -> UInt64 { MonotonicClock.nanoseconds() }
    private static func mib(_ bytes: UInt64) -> String { String(format: "%.1f MiB", Double(bytes) / 1_048_576) }

    private static func isNospaceEvent(_ e: JSONObject) -> Bool {
        e["event"] == .string("io-error") && e["errno"] == .string("ENOSPC")
    }

    /// (a) ext4 made, written with fsync, re-read after remount and drop_caches inside the guest;
    /// then on the host, after the daemon exited: `e2fsck -fn` clean and every file's checksum
    /// equal to the guest's.
    @Test(.timeLimit(.minutes(3))) func ext4RoundTripSurvivesRemountAndChecksOnTheHost() throws {
        let rig = try VhostUserGuestRig(imageBytes: 128 << 20, arguments: [])
        defer { rig.teardown() }
        var states = Set<String>()
        var fronts = Set<String>()
        let run = try rig.boot(script: VhostUserGuestScripts.roundTrip, name: "roundtrip") { _ in
            guard let s = try? rig.status() else { return }
            if let state = s["state"]?.stringValue { states.insert(state) }
            if s["attached"] == .bool(true) { fronts.insert(s["front"]?.stringValue ?? "?") }
        }
        #expect(run.status == 0, "\(run.console.text.suffix(3000))")
        #expect(run.console.text.contains("VERIFIED"))
        let sums = run.console.records("SUM").filter { $0.count == 3 && GuestConsole.isMD5($0[1]) }
        let files = VhostUserGuestScripts.roundTripFiles
        #expect(sums.map { $0[0] } == files.map(\.name), "\(sums)")
        for (record, file) in zip(sums, files) {
            #expect(UInt64(record[2]) == UInt64(file.blockSize * file.count), "size of \(file.name)")
        }
        #expect(states.contains("running"), "status while the guest was connected: \(states)")
        #expect(fronts == ["vhost-user-blk"], "status front while attached: \(fronts)")
        // QEMU is gone: the daemon drained and waits for the next front-end.
        var after = JSONObject()
        #expect(
            try DaemonTest.waitUntil(seconds: 10) {
                after = try rig.status()
                return after["state"] == .string("idle") && after["attached"] == .bool(false)
            }, "\(after)")

        let c = try rig.stats()
        #expect(c["write-requests"] > 0 && c["read-requests"] > 0 && c["flush-requests"] > 0, "\(c.values)")
        #expect(c["responses-error"] == 0 && c["write-errors"] == 0 && c["read-errors"] == 0, "\(c.values)")
        #expect(c["flush-errors"] == 0 && c["invalid-requests"] == 0, "\(c.values)")
        #expect(rig.stopDaemon() == 0, "\(rig.daemon.log.suffix(2000))")

        let fsck = try VhostUserGuestRig.fsck(rig.image)
        #expect(fsck.status == 0, "\(fsck.output)")
        let host = try VhostUserGuestRig.hostChecksums(image: rig.image, names: sums.map { $0[0] })
        for record in sums {
            #expect((host[record[0]] ?? nil) == record[1], "\(record[0]) on the host differs from the guest's")
        }
        let bytes = sums.reduce(UInt64(0)) { $0 + (UInt64($1[2]) ?? 0) }
        print(
            "vhost guest (a) round trip: \(sums.count) files, \(bytes) bytes verified in the guest after remount"
                + " and on the host (debugfs), e2fsck -fn status \(fsck.status); daemon: \(c["write-requests"])"
                + " writes (\(c["write-bytes"]) bytes), \(c["read-requests"]) reads, \(c["flush-requests"]) flushes,"
                + " \(c["responses-error"]) errors; guest \(String(format: "%.1f", run.seconds)) s")
    }

    /// (b) The seed bug. A 256 MiB sparse image on a 24 MiB host ext4 with 6 MiB free,
    /// `--on-nospace report`: the guest writes fsync'd 1 MiB files until writes fail. A write
    /// the host cannot store must fail in the guest (dd gets EIO, the kernel logs an I/O error
    /// on vda), and no file the guest was told is durable may be missing or different when the
    /// image is read back after the daemon exited (journal replayed, as a reboot would). With
    /// O_DIRECT (`none`) and through the host's page cache (`writeback`).
    @Test(.timeLimit(.minutes(3)), arguments: ["none", "writeback"])
    func seedBugNospaceReachesTheGuestAndNoAcknowledgedWriteIsLost(cache: String) throws {
        let rig = try VhostUserGuestRig(
            imageBytes: 256 << 20, arguments: ["--on-nospace", "report", "--cache", cache], loopFilesystemMiB: 24,
            leaveFree: 6 << 20)
        defer { rig.teardown() }
        let freeAtStart = try #require(rig.fs).freeBytes()
        let run = try rig.boot(script: VhostUserGuestScripts.fillUntilFailure(files: 24), name: "seed")
        let console = run.console
        #expect(run.status == 0 && console.text.contains("MKFS-DONE"), "\(console.text.suffix(3000))")
        let okLines = console.records("OK")
        let ok = console.okFiles
        let fails = console.records("FAIL")
        #expect(ok.count == okLines.count, "malformed OK lines: \(okLines)")
        #expect(!ok.isEmpty, "no write succeeded:\n\(console.text.suffix(3000))")
        #expect(!fails.isEmpty, "every write succeeded on a full host filesystem (the seed bug)")
        let firstFailure = fails.first?.joined(separator: " ") ?? ""
        #expect(firstFailure.contains("Input/output error"), "first failure: \(firstFailure)")
        let dmesg = console.section(from: "DMESG-BEGIN", to: "DMESG-END")
        let ioErrors = dmesg.filter { $0.contains("I/O error") && $0.contains("vda") }
        #expect(!ioErrors.isEmpty, "no I/O error on vda in the guest's kernel log: \(dmesg)")

        let c = try rig.stats()
        #expect(c["nospace-errors"] > 0 && c["responses-error"] > 0, "\(c.values)")
        #expect(c["read-errors"] == 0 && c["held"] == 0, "\(c.values)")
        let status = try rig.status()
        #expect(status["io-status"] == .string("nospace") && status["state"] != .string("paused"), "\(status)")
        let events = try rig.events()
        let nospace = events.filter(Self.isNospaceEvent)
        #expect(!nospace.isEmpty && nospace.allSatisfy { $0["action"] == .string("report") }, "\(events)")
        #expect(!events.contains { $0["state"] == .string("paused") }, "no pause under report: \(events)")
        #expect(rig.stopDaemon() == 0, "\(rig.daemon.log.suffix(2000))")

        let replayed = try VhostUserGuestRig.replayedCopy(of: rig.image)
        defer { try? FileManager.default.removeItem(atPath: replayed.directory) }
        let host = try VhostUserGuestRig.hostChecksums(image: replayed.copy, names: Array(ok.keys))
        let lost = ok.keys.sorted().filter { (host[$0] ?? nil) != ok[$0] }
        #expect(lost.isEmpty, "acknowledged to the guest but missing or different on the host: \(lost)")
        let fsck = try VhostUserGuestRig.fsck(replayed.copy)
        print(
            "vhost guest (b) seed bug, report, cache \(cache): host free \(Self.mib(freeAtStart))"
                + " under a 256 MiB image; guest OK \(ok.count) files (\(ok.count) MiB),"
                + " \(ok.count - lost.count) intact on the host after journal replay, lost \(lost.count);"
                + " FAIL \(fails.count) (first: \(firstFailure)); guest kernel I/O error lines \(ioErrors.count);"
                + " daemon nospace-errors \(c["nospace-errors"]), responses-error \(c["responses-error"]),"
                + " write-requests \(c["write-requests"]), io-error events \(nospace.count);"
                + " e2fsck -fn after replay status \(fsck.status); guest \(String(format: "%.1f", run.seconds)) s")
    }

    /// (c) The seed bug under `--on-nospace pause`: when the host runs out the daemon pauses and
    /// the guest's fsync waits (no error, no progress); the test deletes the filler, the daemon
    /// resumes by itself, and every write completes: the guest script writes and re-verifies all
    /// files, and the image is clean and identical on the host.
    @Test(.timeLimit(.minutes(3))) func nospacePauseHoldsTheGuestThenResumesByItselfAndEveryWriteLands() throws {
        let files = 12
        let rig = try VhostUserGuestRig(
            imageBytes: 256 << 20, arguments: ["--on-nospace", "pause", "--pause-timeout", "0"],
            loopFilesystemMiB: 32, leaveFree: 4 << 20)
        defer { rig.teardown() }
        let fs = try #require(rig.fs)
        let freeAtStart = try fs.freeBytes()
        var pausedAt: UInt64? = nil
        var freedAt: UInt64? = nil
        var resumedAt: UInt64? = nil
        var pausedStatus = JSONObject()
        // OK lines half a second into the pause and right before the filler goes.
        var okEarlyInPause: Int? = nil
        var okBeforeFreeing: Int? = nil
        let run = try rig.boot(
            script: VhostUserGuestScripts.writeAllAndVerify(files: files), name: "pause", timeoutSeconds: 90
        ) {
            console in
            guard let s = try? rig.status() else { return }
            let paused = s["state"] == .string("paused")
            let t = Self.now()
            if pausedAt == nil {
                if paused { pausedAt = t }
            } else if let p = pausedAt, freedAt == nil {
                if okEarlyInPause == nil && t - p > 500_000_000 { okEarlyInPause = console.records("OK").count }
                if t - p > 1_500_000_000 {
                    okBeforeFreeing = console.records("OK").count
                    pausedStatus = s
                    fs.removeFiller()
                    freedAt = Self.now()
                }
            } else if resumedAt == nil && !paused {
                resumedAt = t
            }
        }
        let console = run.console
        #expect(run.status == 0, "\(console.text.suffix(3000))")
        #expect(console.text.contains("ALL-VERIFIED files=\(files)"))
        let ok = console.okFiles
        #expect(ok.count == files && console.records("FAIL").isEmpty, "\(console.text.suffix(2000))")
        let paused = try #require(pausedAt, "never paused: the host did not run out (free \(Self.mib(freeAtStart)))")
        let freed = try #require(freedAt, "the guest finished during the pause's first 1.5 s")
        let resumed = try #require(resumedAt, "no resume after the filler was deleted")
        #expect(pausedStatus["state"] == .string("paused") && pausedStatus["reason"] == .string("nospace"))
        #expect((pausedStatus["held"]?.int64Value ?? 0) > 0, "\(pausedStatus)")
        #expect(okEarlyInPause != nil && okEarlyInPause == okBeforeFreeing, "the guest made progress while paused")
        let resumeSeconds = Double(resumed - freed) / 1e9
        #expect(resumeSeconds < 5, "auto-resume took \(resumeSeconds) s")

        let c = try rig.stats()
        #expect(c["nospace-errors"] > 0 && c["resubmitted-requests"] > 0, "\(c.values)")
        #expect(c["responses-error"] == 0 && c["held"] == 0 && c["write-errors"] == c["nospace-errors"], "\(c.values)")
        let status = try rig.status()
        #expect(status["io-status"] == .string("ok") && status["state"] != .string("paused"), "\(status)")
        let events = try rig.events()
        let changes = events.filter { $0["event"] == .string("state-changed") }
        let pauseIndex = changes.firstIndex { $0["state"] == .string("paused") && $0["reason"] == .string("nospace") }
        #expect(pauseIndex != nil && changes[(pauseIndex ?? 0)...].contains { $0["state"] == .string("running") })
        #expect(events.filter(Self.isNospaceEvent).allSatisfy { $0["action"] == .string("pause") }, "\(events)")
        #expect(rig.stopDaemon() == 0, "\(rig.daemon.log.suffix(2000))")

        let fsck = try VhostUserGuestRig.fsck(rig.image)
        #expect(fsck.status == 0, "\(fsck.output)")
        let host = try VhostUserGuestRig.hostChecksums(image: rig.image, names: Array(ok.keys))
        let differ = ok.keys.sorted().filter { (host[$0] ?? nil) != ok[$0] }
        #expect(differ.isEmpty, "missing or different on the host: \(differ)")
        print(
            "vhost guest (c) nospace pause: host free \(Self.mib(freeAtStart)); paused after"
                + " \(okBeforeFreeing ?? -1) of \(files) files with \(pausedStatus["held"]?.int64Value ?? -1) held,"
                + " guest blocked \(String(format: "%.1f", Double(freed - paused) / 1e9)) s, auto-resume"
                + " \(String(format: "%.2f", resumeSeconds)) s after the filler went; guest OK \(ok.count) files"
                + " (\(ok.count) MiB), verified after remount and on the host, e2fsck -fn status \(fsck.status);"
                + " daemon nospace-errors \(c["nospace-errors"]), resubmitted \(c["resubmitted-requests"]),"
                + " responses-error \(c["responses-error"]); guest \(String(format: "%.1f", run.seconds)) s")
    }

    /// (d) The guest's `sync` and fsync reach the daemon as flushes: `flush-requests` read while
    /// the guest sits still after each step rises across mount → sync → fsync, and `tapdiskd
    /// ctl stats` right before the daemon stops shows at least that many, none failed.
    @Test(.timeLimit(.minutes(3))) func guestSyncAndFsyncReachTheDaemonAsFlushes() throws {
        let rig = try VhostUserGuestRig(imageBytes: 128 << 20, arguments: [])
        defer { rig.teardown() }
        let before = try rig.stats()["flush-requests"]
        var atPhase: [String: UInt64] = [:]
        let run = try rig.boot(script: VhostUserGuestScripts.flush, name: "flush") { console in
            for record in console.records("PHASE") where record.count == 1 && atPhase[record[0]] == nil {
                if let c = try? DaemonTest.stats(rig.control) { atPhase[record[0]] = c["flush-requests"] }
            }
        }
        #expect(run.status == 0, "\(run.console.text.suffix(3000))")
        let phases = VhostUserGuestScripts.flushPhases
        let samples = phases.compactMap { atPhase[$0] }
        #expect(samples.count == phases.count, "flush-requests per phase: \(atPhase)")
        if samples.count == phases.count {
            #expect(before <= samples[0], "before \(before), mounted \(samples[0])")
            #expect(samples[1] > samples[0], "sync added no flush: \(atPhase)")
            #expect(samples[2] > samples[1], "fsync added no flush: \(atPhase)")
        }

        let cli = try Tapdiskd.run(["ctl", "--socket", rig.daemon.socketPath, "stats", "--json"])
        #expect(cli.status == 0, "\(cli.stderr)")
        let counters = try JSONParser.parse(cli.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
            .objectValue?["counters"]?.objectValue
        let final = try #require(counters?["flush-requests"]?.uint64Value, "\(cli.stdout)")
        #expect(final >= (samples.last ?? 1) && final > before, "final \(final), phases \(atPhase)")
        #expect(counters?["flush-errors"]?.uint64Value == 0 && counters?["responses-error"]?.uint64Value == 0)
        #expect(rig.stopDaemon() == 0, "\(rig.daemon.log.suffix(2000))")
        print(
            "vhost guest (d) flush: flush-requests before boot \(before), after mount \(samples.first ?? 0),"
                + " after sync \(samples.count > 1 ? samples[1] : 0), after fsync \(samples.last ?? 0),"
                + " before stop (ctl stats) \(final), flush-errors"
                + " \(counters?["flush-errors"]?.uint64Value ?? 0); guest \(String(format: "%.1f", run.seconds)) s")
    }
}
