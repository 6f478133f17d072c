import ArgumentParser
import Glibc
import TapDisk

/// `tapdiskd demo`: the 2006 bug (Red Hat bug 217859) replayed against tapdiskd.
///
/// A sparse image larger than the filesystem holding it is written end to end through the ring.
/// In 2006 every write "succeeded" and the guest's data was silently lost. Here the demo counts,
/// from the frontend's side, that every write got exactly one answer, that every failure was an
/// I/O error the guest could see, and that every write answered OKAY is on disk after a remount;
/// then it replays the run with `--on-nospace pause` and an operator who adds space. A third run
/// (`DemoVMAct`) puts a real Linux guest under QEMU in the frontend's place, when QEMU is there,
/// and a fourth (`DemoNBDAct`) serves that guest over NBD, where QEMU's `werror=enospc` stops the
/// VM until the operator frees space.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo", abstract: "Replay the 2006 ENOSPC bug against tapdiskd and check every guarantee (root).")

    @Flag(help: "Leave the demo's files (host filesystem image, daemon logs) in place for inspection.")
    var keep = false

    @Flag(help: "Print the verdict as one JSON object (and nothing else on stdout).")
    var json = false

    @Option(name: .customLong("queue-depth"), help: "Writes in flight at once.")
    var queueDepth: Int = 32

    @Option(name: .customLong("image-mib"), help: "Size of the guest disk image (a sparse file).")
    var imageMiB: Int = 64

    @Option(name: .customLong("filesystem-mib"), help: "Size of the host filesystem holding it.")
    var filesystemMiB: Int = 16

    func validate() throws {
        guard (1...46).contains(queueDepth) else { throw ValidationError("--queue-depth must be 1...46") }
        guard filesystemMiB >= 8, imageMiB > filesystemMiB else {
            throw ValidationError("--image-mib must exceed --filesystem-mib (at least 8)")
        }
    }

    @Flag(
        inversion: .prefixedNo,
        help: ArgumentHelp(
            "--vm: only the VM acts (a Linux guest under QEMU, over vhost-user-blk, then over NBD); --no-vm: skip them.",
            discussion: "By default the VM acts run after the other two when QEMU and scripts/guest.sh are there, "
                + "and are skipped with the reason otherwise."))
    var vm: Bool? = nil

    func run() throws {
        guard geteuid() == 0 else {
            printError("tapdiskd demo needs root: it loop-mounts a \(filesystemMiB) MiB ext4 (run it with sudo)")
            throw ExitCode(1)
        }
        for tool in ["mkfs.ext4", "losetup", "mount", "umount", "truncate"] where !Subprocess.which(tool) {
            printError("tapdiskd demo needs \(tool) (apt-get install -y e2fsprogs mount util-linux coreutils)")
            throw ExitCode(1)
        }
        signal(SIGINT) { _ in demoInterrupted.store(true, ordering: .relaxed) }
        signal(SIGTERM) { _ in demoInterrupted.store(true, ordering: .relaxed) }
        let progress = DemoProgress(quiet: json)
        progress.say("tapdiskd demo: Red Hat bug 217859 (2006), scaled down")
        progress.say("  In 2006 a guest wrote 500 MB onto a 1 GB sparse image on a 200 MB host filesystem; every write")
        var results: [DemoScenario.Result] = []
        if vm != true {
            progress.say(
                "  \"succeeded\" because tapdisk dropped the AIO errors. Here: a \(imageMiB) MiB sparse image on a \(filesystemMiB) MiB ext4."
            )
            results = try runRingActs(progress)
        } else {
            progress.say("  \"succeeded\" because tapdisk dropped the AIO errors.")
        }
        var vmOutcome = DemoVMOutcome.notRequested
        var nbdOutcome = DemoNBDOutcome.notRequested
        if vm != false {
            vmOutcome = try runVMAct(progress)
            nbdOutcome = try runNBDAct(progress)
        }
        let verdict = Verdict(results: results, ringRunsRequested: vm != true, vm: vmOutcome, nbd: nbdOutcome)
        if json {
            print(JSONWriter.string(.object(verdict.json)))
        } else {
            progress.say("")
            for line in verdict.lines { progress.say(line) }
        }
        if !verdict.passed { throw ExitCode(2) }
    }

    /// Runs 1 and 2: the library's frontend writes through the ring, with `report`, then `pause`.
    private func runRingActs(_ progress: DemoProgress) throws -> [DemoScenario.Result] {
        let filesystem: DemoFilesystem
        do {
            filesystem = try DemoFilesystem(sizeMiB: filesystemMiB)
        } catch {
            printError("tapdiskd demo: \(error)")
            throw ExitCode(1)
        }
        defer {
            filesystem.cleanup(keep: keep)
            if keep { progress.say("kept: \(filesystem.directory) (host filesystem image and daemon logs)") }
        }
        progress.say(
            "  host filesystem: \(filesystem.mountPoint) on \(filesystem.loopDevice ?? "?") (ext4 -m 0, \(filesystem.freeBytes >> 10) KiB free)"
        )
        var results: [DemoScenario.Result] = []
        do {
            for (index, policy) in ["report", "pause"].enumerated() {
                progress.say("")
                progress.say(
                    index == 0
                        ? "Run 1: tapdiskd --on-nospace report (answer ERROR at once)"
                        : "Run 2: tapdiskd --on-nospace pause (hold the writes, pause, wait for the operator)")
                var writeMiB: Int? = nil
                if policy == "pause" {
                    // Another tenant's file fills the host filesystem, leaving less room than the
                    // guest is about to write; the operator will delete it when the disk pauses.
                    writeMiB = min(imageMiB, max(4, filesystemMiB / 2))
                    try filesystem.makeFiller(leavingBytes: UInt64(writeMiB!) << 19)
                    progress.say(
                        "  another tenant's file leaves \(filesystem.freeBytes >> 10) KiB free; the guest writes \(writeMiB!) MiB"
                    )
                }
                let scenario = DemoScenario(
                    filesystem: filesystem, policy: policy, imageMiB: imageMiB, writeMiB: writeMiB,
                    queueDepth: queueDepth, progress: progress,
                    runTag: UInt64(index + 1) << 32 | UInt64(getpid()))
                let result = try scenario.run()
                results.append(result)
                describe(result, progress)
                unlink(scenario.imagePath)
            }
        } catch {
            progress.finishLine()
            printError("tapdiskd demo: \(error)")
            throw ExitCode(1)
        }
        return results
    }

    /// Run 3: a real Linux guest under QEMU, when QEMU and the guest are there (or `--vm` asks
    /// for it, and then their absence is an error).
    private func runVMAct(_ progress: DemoProgress) throws -> DemoVMOutcome {
        progress.say("")
        progress.say("Run 3: a Linux guest under QEMU (vhost-user-blk) on tapdiskd --on-nospace report")
        for tool in ["debugfs", "e2fsck", "md5sum"] where !Subprocess.which(tool) {
            return try skipVMAct("\(tool) is not installed (apt-get install -y e2fsprogs coreutils)", progress)
        }
        let buildLog = "/tmp/tapdiskd-demo-guest-build-\(getpid()).log"
        defer { unlink(buildLog) }
        switch DemoGuest.prepare(log: buildLog, progress: progress) {
        case .unavailable(let reason):
            return try skipVMAct(reason, progress)
        case .ready(let guestScript):
            do {
                return .ran(try DemoVMAct(guestScript: guestScript, progress: progress).run(keep: keep))
            } catch {
                printError("tapdiskd demo: VM act: \(error)")
                throw ExitCode(1)
            }
        }
    }

    /// Run 4: the guest again, its disk on QEMU's NBD client and tapdiskd's NBD front, with
    /// QEMU's `werror=enospc`: the VM stops, the operator frees space and continues.
    private func runNBDAct(_ progress: DemoProgress) throws -> DemoNBDOutcome {
        progress.say("")
        progress.say(
            "Run 4: the guest over NBD, QEMU werror=enospc: stop the VM, free space, cont (a KVM operator's fix)")
        for tool in ["debugfs", "e2fsck", "md5sum"] where !Subprocess.which(tool) {
            return try skipNBDAct("\(tool) is not installed (apt-get install -y e2fsprogs coreutils)", progress)
        }
        let buildLog = "/tmp/tapdiskd-demo-guest-build-\(getpid()).log"
        defer { unlink(buildLog) }
        switch DemoGuest.prepare(log: buildLog, progress: progress) {
        case .unavailable(let reason):
            return try skipNBDAct(reason, progress)
        case .ready(let guestScript):
            let help = (try? Subprocess.output([DemoScenario.selfExecutable, "serve", "--help"])) ?? ""
            guard help.contains("--nbd") else {
                return try skipNBDAct("this tapdiskd has no NBD front (serve --nbd)", progress)
            }
            do {
                return .ran(try DemoNBDAct(guestScript: guestScript, progress: progress).run(keep: keep))
            } catch {
                printError("tapdiskd demo: NBD act: \(error)")
                throw ExitCode(1)
            }
        }
    }

    private func skipNBDAct(_ reason: String, _ progress: DemoProgress) throws -> DemoNBDOutcome {
        if vm == true {
            printError("tapdiskd demo --vm: \(reason)")
            throw ExitCode(1)
        }
        progress.say("  skipped: \(reason)")
        return .skipped(reason)
    }

    private func skipVMAct(_ reason: String, _ progress: DemoProgress) throws -> DemoVMOutcome {
        if vm == true {
            printError("tapdiskd demo --vm: \(reason)")
            throw ExitCode(1)
        }
        progress.say("  skipped: \(reason)")
        return .skipped(reason)
    }

    private func describe(_ r: DemoScenario.Result, _ progress: DemoProgress) {
        progress.say(
            "  frontend: \(r.writes) writes, \(r.okay) answered OKAY, \(r.error) answered ERROR, \(r.missing) never answered"
        )
        if let e = r.firstIOError {
            progress.say(
                "  toolstack: io-error event operation=\(e["operation"]?.stringValue ?? "?") errno=\(e["errno"]?.stringValue ?? "?") nospace=\(e["nospace"]?.boolValue == true) action=\(e["action"]?.stringValue ?? "?") sector=\(e["sector"]?.uint64Value ?? 0) (\(r.ioErrorEvents) events after rate limiting)"
            )
        } else {
            progress.say("  toolstack: no io-error event")
        }
        let s = r.statusAfter
        progress.say(
            "  ctl status: state \(s["state"]?.stringValue ?? "?"), io-status \(s["io-status"]?.stringValue ?? "?"), in-flight \(s["in-flight"]?.int64Value ?? -1), held \(s["held"]?.int64Value ?? -1)"
        )
        if r.policy == "pause" {
            progress.say("  held then completed after resume: \(r.resubmitted) writes")
        }
        progress.say("  after umount and mount: \(r.intact) of \(r.verified) acknowledged writes intact")
    }
}
