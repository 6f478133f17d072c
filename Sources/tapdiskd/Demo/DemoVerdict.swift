import TapDisk

/// What became of the VM act: not asked for (`--no-vm`), skipped for a reason the demo printed,
/// or run.
enum DemoVMOutcome {
    case notRequested
    case skipped(String)
    case ran(DemoVMAct.Result)
}

/// What became of the NBD act, as for the VM act.
enum DemoNBDOutcome {
    case notRequested
    case skipped(String)
    case ran(DemoNBDAct.Result)
}

/// The demo's conclusion, as text and as one JSON object.
struct Verdict {
    /// Runs 1 and 2 (the library's frontend on the ring); empty under `--vm`.
    let results: [DemoScenario.Result]
    /// Whether runs 1 and 2 were asked for (they are, unless `--vm`).
    let ringRunsRequested: Bool
    let vm: DemoVMOutcome
    let nbd: DemoNBDOutcome

    var report: DemoScenario.Result? { results.first { $0.policy == "report" } }
    var pause: DemoScenario.Result? { results.first { $0.policy == "pause" } }

    var vmResult: DemoVMAct.Result? {
        if case .ran(let r) = vm { return r }
        return nil
    }

    var nbdResult: DemoNBDAct.Result? {
        if case .ran(let r) = nbd { return r }
        return nil
    }

    /// The guarantees, each checked on what the frontend itself saw.
    var checks: [(String, Bool)] {
        var c: [(String, Bool)] = []
        if ringRunsRequested {
            c.append(
                (
                    "every write answered exactly once",
                    results.allSatisfy { $0.missing == 0 && $0.duplicates == 0 && $0.okay + $0.error == $0.writes }
                ))
            c.append(("no acknowledged write lost", results.allSatisfy { $0.lost == 0 && $0.verified == $0.okay }))
            c.append(("report: ENOSPC reached the guest as I/O errors", (report?.error ?? 0) > 0))
            c.append(
                (
                    "report: the toolstack got an io-error event with nospace",
                    report?.firstIOError?["nospace"]?.boolValue == true
                ))
            c.append(
                ("report: status showed io-status nospace", report?.statusAfter["io-status"]?.stringValue == "nospace"))
            c.append(("pause: the disk paused for nospace", pause?.pausedReason == "nospace"))
            c.append(
                (
                    "pause: held writes completed after the operator added space",
                    (pause?.resubmitted ?? 0) > 0 && pause?.resumedAutomatically == true
                ))
            c.append(("pause: every write landed", pause.map { $0.error == 0 && $0.okay == $0.writes } ?? false))
            c.append(("daemons exited 0 after SIGTERM", results.allSatisfy { $0.daemonExit == 0 }))
        }
        if let v = vmResult {
            c.append(("vm: the guest ran its script to the end", v.guestExit == 0))
            c.append(("vm: the guest's dd got EIO", v.guestSawEIO))
            c.append(("vm: the guest's kernel logged I/O error, dev vda", v.dmesgIOErrors > 0))
            c.append(
                ("vm: the toolstack got an io-error event with nospace", v.firstIOError?["nospace"]?.boolValue == true))
            c.append(
                (
                    "vm: every file the guest was told was written is intact",
                    !v.acknowledged.isEmpty && v.intact == v.acknowledged.count
                ))
            c.append(("vm: the guest's ext4 is clean (e2fsck -fn on the host)", v.fsckStatus == 0))
            c.append(("vm: tapdiskd exited 0 after SIGTERM", v.daemonExit == 0))
        }
        if let n = nbdResult {
            c.append(
                (
                    "nbd: tapdiskd answered ENOSPC by name (io-error event, nospace)",
                    n.firstIOError?["errno"]?.stringValue == "ENOSPC"
                ))
            c.append(
                ("nbd: QEMU stopped the VM for nospace (BLOCK_IO_ERROR, query-status io-error)", n.stoppedForNospace))
            c.append(("nbd: the VM resumed after the operator freed space and sent cont", n.contSent > 0 && n.resumed))
            c.append(
                (
                    "nbd: the guest saw no error and wrote every file",
                    n.guestSawNoError && n.vm.acknowledged.count == DemoNBDAct.files
                ))
            c.append(("nbd: every file re-read in the guest after a remount matches", n.rereadMatches))
            c.append(
                (
                    "nbd: every file is intact on the host",
                    !n.vm.acknowledged.isEmpty && n.intact == n.vm.acknowledged.count
                ))
            c.append(("nbd: the guest's ext4 is clean (e2fsck -fn on the host)", n.fsckStatus == 0))
            c.append(("nbd: tapdiskd exited 0 after SIGTERM", n.daemonExit == 0))
        }
        return c
    }

    var passed: Bool {
        (!ringRunsRequested || results.count == 2) && !checks.isEmpty && checks.allSatisfy(\.1)
    }

    var lines: [String] {
        ["Verdict: \(passed ? "PASS" : "FAIL")"] + checks.map { "  [\($0.1 ? "ok" : "FAILED")] \($0.0)" }
    }

    var json: JSONObject {
        var runs = JSONObject()
        for r in results {
            runs.set(
                r.policy,
                .object([
                    "writes": .integer(r.writes), "okay": .integer(r.okay), "error": .integer(r.error),
                    "missing": .integer(r.missing), "duplicates": .integer(r.duplicates),
                    "acknowledged-verified": .integer(r.verified), "acknowledged-intact": .integer(r.intact),
                    "acknowledged-lost": .integer(r.lost),
                    "io-error-events": .integer(r.ioErrorEvents),
                    "first-io-error": r.firstIOError.map { .object($0) } ?? .null,
                    "paused-reason": r.pausedReason.map { .string($0) } ?? .null,
                    "resumed-automatically": .bool(r.resumedAutomatically), "held-then-completed": .uint(r.resubmitted),
                    "operator-freed-space": .bool(r.operatorFreedSpace),
                    "status": .object(r.statusAfter), "counters": .object(r.countersAfter),
                    "seconds": .double((r.seconds * 1000).rounded() / 1000), "daemon-exit": .integer(r.daemonExit),
                ]))
        }
        var checksObject = JSONObject()
        for (name, ok) in checks { checksObject.set(name, .bool(ok)) }
        var object: JSONObject = ["passed": .bool(passed), "runs": .object(runs), "checks": .object(checksObject)]
        switch vm {
        case .notRequested: break
        case .skipped(let reason): object.set("vm", .object(["skipped": .string(reason)]))
        case .ran(let v): object.set("vm", .object(Self.json(v)))
        }
        switch nbd {
        case .notRequested: break
        case .skipped(let reason): object.set("nbd-vm", .object(["skipped": .string(reason)]))
        case .ran(let n): object.set("nbd-vm", .object(Self.json(n)))
        }
        return object
    }

    static func json(_ v: DemoVMAct.Result) -> JSONObject {
        [
            "image-mib": .integer(v.imageMiB), "host-free-kib": .uint(v.hostFreeKiB),
            "guest-free-kib": v.guestFreeKiB.map { .integer($0) } ?? .null,
            "guest-exit": .integer(v.guestExit),
            "files-acknowledged": .integer(v.acknowledged.count), "files-intact": .integer(v.intact),
            "failed-file": v.failedFile.map { .string($0) } ?? .null,
            "guest-error": v.failure.map { .string($0) } ?? .null,
            "guest-saw-eio": .bool(v.guestSawEIO),
            "dmesg-io-errors": .integer(v.dmesgIOErrors), "dmesg": .array(v.dmesg.map { .string($0) }),
            "guest-unmounted": .bool(v.unmounted),
            "io-error-events": .integer(v.ioErrorEvents),
            "first-io-error": v.firstIOError.map { .object($0) } ?? .null,
            "status": .object(v.statusAfter), "counters": .object(v.countersAfter),
            "daemon-exit": .integer(v.daemonExit), "e2fsck-exit": .integer(v.fsckStatus),
            "seconds": .double((v.seconds * 1000).rounded() / 1000),
        ]
    }

    static func json(_ n: DemoNBDAct.Result) -> JSONObject {
        [
            "image-mib": .integer(n.imageMiB), "host-free-kib": .uint(n.hostFreeKiB),
            "guest-exit": .integer(n.guestExit), "files": .integer(DemoNBDAct.files),
            "files-acknowledged": .integer(n.vm.acknowledged.count), "files-intact": .integer(n.intact),
            "files-reread-matching": .integer(n.vm.acknowledged.filter { n.reread[$0.name] == $0.md5 }.count),
            "guest-error": n.vm.failure.map { .string($0) } ?? .null,
            "dmesg-io-errors": .integer(n.vm.dmesgIOErrors),
            "block-io-errors": .array(n.blockIOErrors.map { .object($0) }),
            "stop-status": n.stopStatus.map { .string($0) } ?? .null,
            "stopped-for-nospace": .bool(n.stoppedForNospace),
            "cont-sent": .integer(n.contSent), "resumed": .bool(n.resumed), "freed-kib": .uint(n.freedKiB),
            "io-error-events": .integer(n.ioErrorEvents),
            "first-io-error": n.firstIOError.map { .object($0) } ?? .null,
            "counters": .object(n.countersAfter),
            "daemon-exit": .integer(n.daemonExit), "e2fsck-exit": .integer(n.fsckStatus),
            "seconds": .double((n.seconds * 1000).rounded() / 1000),
        ]
    }
}
