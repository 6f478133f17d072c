import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The 2006 seed bug (Red Hat bug 217859) with a real Linux guest whose disk is QEMU's NBD
/// client on the NBD server under test: a sparse image on a host filesystem that runs out. NBD
/// carries ENOSPC by name, so QEMU's own error policy decides what the guest sees:
///
/// - `werror=report`: the guest's dd gets EIO, as with vhost-user; no acknowledged file is lost.
/// - `werror=enospc`: QEMU stops the VM (QMP `query-status` says `io-error`, `BLOCK_IO_ERROR`
///   has `nospace: true`); the test, as the operator, deletes a filler file on the host and
///   sends `cont`; the guest's writes complete with no error inside the guest, and every file
///   verifies in the guest after a remount and on the host.
///
/// Needs root (loop mounts), qemu-system-x86_64 and the cached guest (`scripts/guest.sh build`).
@Suite(
    .serialized, .timeLimit(.minutes(4)),
    .enabled(
        if: VhostUserGuest.available && LoopFilesystem.isRoot && NBDServerProcess.available(),
        "needs root (loop mounts), qemu-system-x86_64 and `scripts/guest.sh build`"))
struct NBDGuestTests {
    private static func mib(_ bytes: UInt64) -> String { String(format: "%.1f MiB", Double(bytes) / 1_048_576) }

    /// `werror=report`: a 256 MiB image on a 24 MiB ext4 with 6 MiB free; the guest writes
    /// fsync'd 1 MiB files until writes fail. The failure reaches the guest as EIO and its kernel
    /// logs it; QEMU reported `BLOCK_IO_ERROR` (reason ENOSPC's text, action `report`) and
    /// never stopped the VM; every file the guest was told is durable is intact on the host.
    @Test func werrorReportTheGuestGetsEIOAndNoAcknowledgedWriteIsLost() throws {
        let rig = try NBDGuestRig(
            imageBytes: 256 << 20, filesystemMiB: 24, leaveFree: 6 << 20, arguments: ["--on-nospace", "report"])
        defer { rig.teardown() }
        let freeAtStart = try rig.fs.freeBytes()
        var events: [JSONObject] = []
        let run = try rig.boot(
            script: VhostUserGuestScripts.fillUntilFailure(files: 24), name: "report", werror: "report"
        ) { _, qmp in
            while let e = try? qmp?.nextEvent(timeoutMilliseconds: 0) { events.append(e) }
        }
        let console = run.console
        #expect(run.status == 0, "\(console.text.suffix(3000))")
        let ok = console.okFiles
        let fails = console.records("FAIL")
        #expect(!ok.isEmpty, "no write succeeded:\n\(console.text.suffix(3000))")
        #expect(!fails.isEmpty, "every write succeeded on a full host filesystem (the seed bug)")
        let firstFailure = fails.first?.joined(separator: " ") ?? ""
        #expect(firstFailure.contains("Input/output error"), "first failure: \(firstFailure)")
        let ioErrors = console.section(from: "DMESG-BEGIN", to: "DMESG-END").filter {
            $0.contains("I/O error") && $0.contains("vda")
        }
        #expect(!ioErrors.isEmpty, "no I/O error on vda in the guest's kernel log")
        let blockErrors = events.filter { $0["event"] == .string("BLOCK_IO_ERROR") }
        #expect(!blockErrors.isEmpty, "no BLOCK_IO_ERROR: \(events)")
        // QEMU adds `nospace` only when it stops the VM; under `report` the errno is in `reason`.
        #expect(
            blockErrors.allSatisfy {
                $0["data"]?["reason"] == .string("No space left on device")
                    && $0["data"]?["action"] == .string("report")
            },
            "\(blockErrors)")
        #expect(!events.contains { $0["event"] == .string("STOP") }, "the VM stopped under werror=report: \(events)")
        if let daemon = rig.server.daemon {
            let c = try DaemonTest.stats(try daemon.client())
            #expect(c["nospace-errors"] > 0 && c["held"] == 0, "\(c.values)")
        }
        #expect(rig.server.stop() == 0, "\(rig.server.log.suffix(2000))")

        let replayed = try VhostUserGuestRig.replayedCopy(of: rig.image)
        defer { try? FileManager.default.removeItem(atPath: replayed.directory) }
        let host = try VhostUserGuestRig.hostChecksums(image: replayed.copy, names: Array(ok.keys))
        let lost = ok.keys.sorted().filter { (host[$0] ?? nil) != ok[$0] }
        #expect(lost.isEmpty, "acknowledged to the guest but missing or different on the host: \(lost)")
        print(
            "nbd guest werror=report [\(rig.server.kind.rawValue)]: host free \(Self.mib(freeAtStart)); guest OK"
                + " \(ok.count) files, lost \(lost.count); FAIL \(fails.count) (first: \(firstFailure)); guest"
                + " kernel I/O error lines \(ioErrors.count); BLOCK_IO_ERROR \(blockErrors.count) (No space left on device, report);"
                + " guest \(String(format: "%.1f", run.seconds)) s")
    }

    /// `werror=enospc`: a 256 MiB image on a 32 MiB ext4 with 4 MiB free; the guest writes and
    /// re-verifies 12 fsync'd 1 MiB files. QEMU stops the VM when the host runs out; while it is
    /// stopped the guest makes no progress; the operator deletes the filler and sends `cont`;
    /// every write lands, with no error inside the guest, and verifies on the host.
    @Test func werrorEnospcStopsTheVMUntilTheOperatorFreesSpaceAndContinues() throws {
        let files = 12
        let rig = try NBDGuestRig(
            imageBytes: 256 << 20, filesystemMiB: 32, leaveFree: 4 << 20, arguments: ["--on-nospace", "report"])
        defer { rig.teardown() }
        let freeAtStart = try rig.fs.freeBytes()
        var events: [JSONObject] = []
        var stoppedStatus: (status: String, running: Bool)? = nil
        var stoppedAt: UInt64? = nil
        var okAtStop: Int? = nil
        var okBeforeCont: Int? = nil
        var contSent = 0
        var contError: String? = nil
        let run = try rig.boot(
            script: VhostUserGuestScripts.writeAllAndVerify(files: files), name: "enospc", werror: "enospc"
        ) { console, qmp in
            guard let qmp else { return }
            while let e = try? qmp.nextEvent(timeoutMilliseconds: 0) {
                events.append(e)
                if e["event"] == .string("STOP") && stoppedAt == nil {
                    stoppedAt = MonotonicClock.nanoseconds()
                    okAtStop = console.records("OK").count
                    stoppedStatus = try? qmp.status()
                }
            }
            guard let at = stoppedAt, MonotonicClock.nanoseconds() - at > 1_000_000_000 else { return }
            // Stopped for a second: the operator looks, frees space and continues. QEMU stops
            // again if the space does not suffice; then the operator continues again.
            guard let now = try? qmp.status(), now.status == "io-error" else { return }
            if contSent == 0 {
                okBeforeCont = console.records("OK").count
                rig.fs.removeFiller()
            }
            do {
                try qmp.execute("cont")
                contSent += 1
            } catch {
                contError = "\(error)"
            }
            stoppedAt = MonotonicClock.nanoseconds()
        }
        let console = run.console
        #expect(run.status == 0, "\(console.text.suffix(3000))")
        #expect(console.text.contains("ALL-VERIFIED files=\(files)"), "\(console.text.suffix(3000))")
        let ok = console.okFiles
        #expect(ok.count == files && console.records("FAIL").isEmpty, "\(console.text.suffix(2000))")
        #expect(contError == nil, "\(contError ?? "")")
        let stopped = try #require(
            stoppedStatus, "QEMU never stopped the VM (host free \(Self.mib(freeAtStart))): \(events)")
        #expect(stopped.status == "io-error" && !stopped.running, "query-status while stopped: \(stopped)")
        let blockErrors = events.filter { $0["event"] == .string("BLOCK_IO_ERROR") }
        #expect(
            !blockErrors.isEmpty
                && blockErrors.allSatisfy {
                    $0["data"]?["nospace"] == .bool(true) && $0["data"]?["action"] == .string("stop")
                },
            "\(blockErrors)")
        #expect(events.contains { $0["event"] == .string("RESUME") }, "no RESUME after cont: \(events)")
        #expect(okAtStop != nil && okAtStop == okBeforeCont, "the guest made progress while the VM was stopped")
        #expect(contSent >= 1)
        if let daemon = rig.server.daemon {
            let c = try DaemonTest.stats(try daemon.client())
            #expect(c["nospace-errors"] > 0 && c["held"] == 0, "\(c.values)")
        }
        #expect(rig.server.stop() == 0, "\(rig.server.log.suffix(2000))")

        let fsck = try VhostUserGuestRig.fsck(rig.image)
        #expect(fsck.status == 0, "\(fsck.output)")
        let host = try VhostUserGuestRig.hostChecksums(image: rig.image, names: Array(ok.keys))
        let differ = ok.keys.sorted().filter { (host[$0] ?? nil) != ok[$0] }
        #expect(differ.isEmpty, "missing or different on the host: \(differ)")
        print(
            "nbd guest werror=enospc [\(rig.server.kind.rawValue)]: host free \(Self.mib(freeAtStart)); VM stopped"
                + " (query-status \(stopped.status)) after \(okAtStop ?? -1) of \(files) files, BLOCK_IO_ERROR"
                + " \(blockErrors.count) (nospace, stop), cont sent \(contSent); guest OK \(ok.count) files, 0 FAIL,"
                + " verified after remount and on the host, e2fsck -fn status \(fsck.status);"
                + " guest \(String(format: "%.1f", run.seconds)) s")
    }
}
