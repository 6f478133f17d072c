import Glibc
import TapDisk

/// The demo's NBD act: the 2006 bug made harmless the way a KVM host operator wants it. The
/// guest's disk is QEMU's NBD client on `tapdiskd serve --nbd`; when the host filesystem under the
/// sparse image runs out, tapdiskd answers the write with NBD_ENOSPC, by name, and QEMU's
/// `werror=enospc` stops the VM instead of failing the guest's write. The operator (the demo)
/// sees `BLOCK_IO_ERROR` with `nospace: true` on QMP, deletes another tenant's file and sends
/// `cont`; QEMU retries the writes, the guest never sees an error, and every file it wrote is
/// on the host, intact.
struct DemoNBDAct {
    struct Result {
        var imageMiB = 0
        var hostFreeKiB: UInt64 = 0
        var guestExit: Int32 = -1
        var vm = DemoVMAct.Result()
        /// Files the guest re-read after a remount, with their md5.
        var reread: [String: String] = [:]
        var blockIOErrors: [JSONObject] = []
        var stopStatus: String? = nil
        var contSent = 0
        var resumed = false
        var freedKiB: UInt64 = 0
        var firstIOError: JSONObject? = nil
        var ioErrorEvents = 0
        var countersAfter: JSONObject = [:]
        var daemonExit: Int32 = -1
        var fsckStatus: Int32 = -1
        var intact = 0
        var seconds = 0.0

        var stoppedForNospace: Bool {
            stopStatus == "io-error" && !blockIOErrors.isEmpty
                && blockIOErrors.allSatisfy { $0["data"]?["nospace"]?.boolValue == true }
        }
        var guestSawNoError: Bool { guestExit == 0 && vm.failedFile == nil && vm.dmesgIOErrors == 0 }
        var rereadMatches: Bool {
            !vm.acknowledged.isEmpty && vm.acknowledged.allSatisfy { reread[$0.name] == $0.md5 }
        }
    }

    static let imageMiB = 256
    static let filesystemMiB = 32
    static let fileMiB = 2
    static let files = 8
    /// What the other tenant leaves free: the guest's mkfs and its first files fit, the rest not.
    static let leaveFreeMiB = 10

    let guestScript: String
    let progress: DemoProgress

    func run(keep: Bool) throws -> Result {
        var result = Result(imageMiB: Self.imageMiB)
        let filesystem = try DemoFilesystem(sizeMiB: Self.filesystemMiB)
        defer {
            filesystem.cleanup(keep: keep)
            if keep { progress.say("  kept: \(filesystem.directory) (console log, daemon log, host filesystem image)") }
        }
        let image = filesystem.mountPoint + "/guest-disk.img"
        let control = filesystem.directory + "/nbd-vm.sock"
        let nbd = filesystem.directory + "/nbd-vm.nbd.sock"
        let qmpPath = filesystem.directory + "/nbd-vm.qmp.sock"
        let script = filesystem.directory + "/guest-script.sh"
        let console = filesystem.directory + "/guest-console.log"
        do {
            try ImageCreator.create(path: image, sizeBytes: UInt64(Self.imageMiB) << 20, preallocation: .off)
        } catch {
            throw DemoScenario.Failure(description: error.message)
        }
        try filesystem.makeFiller(leavingBytes: UInt64(Self.leaveFreeMiB) << 20)
        result.hostFreeKiB = filesystem.freeBytes >> 10
        progress.say(
            "  host filesystem: \(filesystem.mountPoint) (ext4 -m 0); another tenant's file leaves \(result.hostFreeKiB) KiB free; guest disk: a \(Self.imageMiB) MiB sparse image on it"
        )
        try Self.writeGuestScript(to: script)
        let start = MonotonicClock.nanoseconds()
        let daemon = try DemoChild(
            [
                DemoScenario.selfExecutable, "serve", "--image", image, "--socket", control, "--nbd", "unix:" + nbd,
                "--on-nospace", "report", "--log-level", "notice",
            ],
            logPath: filesystem.directory + "/tapdiskd-nbd-vm.log")
        let toolstack = try DemoScenario.connect(control, daemon: daemon)
        try toolstack.call("subscribe")
        guard access(nbd, F_OK) == 0 else {
            throw DemoScenario.Failure(description: "tapdiskd is not listening on \(nbd)")
        }
        progress.say(
            "  tapdiskd --on-nospace report --nbd unix:\(nbd): an ENOSPC goes to QEMU by name (NBD_ENOSPC)")
        progress.say(
            "  QEMU: -blockdev driver=nbd, virtio-blk werror=enospc; the guest writes \(Self.files) files of \(Self.fileMiB) MiB with dd conv=fsync"
        )
        setenv("TAPDISK_GUEST_TIMEOUT", "180", 1)
        setenv("TAPDISK_GUEST_WERROR", "enospc", 1)
        setenv("TAPDISK_GUEST_QMP", qmpPath, 1)
        defer {
            unsetenv("TAPDISK_GUEST_WERROR")
            unsetenv("TAPDISK_GUEST_QMP")
        }
        let guest = try DemoChild([guestScript, "run-nbd", nbd, script], logPath: console)
        var qmp: QMPClient? = nil
        var stoppedAt: UInt64? = nil
        while true {
            if demoInterrupted.load(ordering: .relaxed) { throw DemoScenario.Failure(description: "interrupted") }
            if let status = guest.wait(timeoutSeconds: 0) {
                result.guestExit = status
                break
            }
            if qmp == nil, access(qmpPath, F_OK) == 0 { qmp = try? QMPClient(socketPath: qmpPath) }
            while let event = try? qmp?.nextEvent(timeoutMilliseconds: 0) {
                switch event["event"]?.stringValue {
                case "BLOCK_IO_ERROR":
                    result.blockIOErrors.append(event)
                    if result.blockIOErrors.count == 1 { describe(blockIOError: event) }
                case "STOP" where stoppedAt == nil:
                    stoppedAt = MonotonicClock.nanoseconds()
                    let status = (try? qmp?.status())?.status ?? "?"
                    if result.stopStatus == nil {
                        result.stopStatus = status
                        progress.say("  QMP query-status: \(status); the guest is frozen, its dd waits")
                    }
                case "RESUME":
                    result.resumed = true
                default: break
                }
            }
            while let event = try toolstack.nextEvent(timeoutMilliseconds: 100) { note(event, &result) }
            // The operator looks for a second, frees space once, and continues (again, if QEMU
            // stopped again before the space was visible).
            if let at = stoppedAt, MonotonicClock.nanoseconds() - at > 1_000_000_000, let qmp {
                if result.contSent == 0 {
                    let before = filesystem.freeBytes
                    filesystem.removeFiller()
                    result.freedKiB = (filesystem.freeBytes - min(before, filesystem.freeBytes)) >> 10
                    progress.say(
                        "  operator: deletes the other tenant's file (\(result.freedKiB >> 10) MiB freed) and sends QMP cont"
                    )
                }
                try qmp.execute("cont")
                result.contSent += 1
                stoppedAt = nil
                // QEMU's own word that the guest runs again (RESUME is counted too, as it comes).
                if (try? qmp.status())?.running == true { result.resumed = true }
            }
        }
        Self.parseConsole(Subprocess.readFile(console), into: &result)
        result.countersAfter = try toolstack.call("stats")["counters"]?.objectValue ?? [:]
        for event in toolstack.drainQueuedEvents() { note(event, &result) }
        result.daemonExit = daemon.terminate(timeoutSeconds: 30)
        result.seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
        describeGuest(result, console: console)
        try filesystem.remount()
        result.fsckStatus = try Subprocess.run(["e2fsck", "-fn", image], allowFailure: true)
        result.intact = try DemoVMAct.countIntact(result.vm.acknowledged, image: image, scratch: filesystem.directory)
        progress.say(
            "  host, after umount and mount: e2fsck -fn \(result.fsckStatus == 0 ? "clean" : "exit \(result.fsckStatus)"); \(result.intact) of \(result.vm.acknowledged.count) files intact (md5 via debugfs)"
        )
        return result
    }

    /// The VM act's `VM-` lines, plus `VM-REREAD name md5` for each file re-read after a remount.
    static func parseConsole(_ text: String, into result: inout Result) {
        DemoVMAct.parseConsole(text, into: &result.vm)
        for line in text.split(separator: "\n") where line.hasPrefix("VM-REREAD ") {
            let words = line.split(separator: " ").map(String.init)
            if words.count == 3 { result.reread[words[1]] = words[2] }
        }
    }

    private func note(_ event: JSONObject, _ result: inout Result) {
        guard event["event"]?.stringValue == "io-error" else { return }
        result.ioErrorEvents += 1
        if result.firstIOError == nil {
            result.firstIOError = event
            progress.say(
                "  toolstack: tapdiskd io-error event errno=\(event["errno"]?.stringValue ?? "?") action=\(event["action"]?.stringValue ?? "?"): the error went to QEMU, by name"
            )
        }
    }

    private func describe(blockIOError event: JSONObject) {
        let data = event["data"]?.objectValue ?? [:]
        progress.say(
            "  QEMU: BLOCK_IO_ERROR operation=\(data["operation"]?.stringValue ?? "?") action=\(data["action"]?.stringValue ?? "?") nospace=\(data["nospace"]?.boolValue == true) (\(data["reason"]?.stringValue ?? ""))"
        )
    }

    private func describeGuest(_ r: Result, console: String) {
        progress.say(
            "  QEMU: \(r.resumed ? "RESUME" : "no RESUME") after \(r.contSent) cont; the stopped writes were retried")
        let written = r.vm.acknowledged.count
        if let file = r.vm.failedFile, let failure = r.vm.failure {
            progress.say("  guest: \(written) files written, then \(file): \(failure) (console: \(console))")
        } else {
            progress.say(
                "  guest: \(written) of \(Self.files) files written (\(written * Self.fileMiB) MiB), no error; after remount \(r.reread.count) re-read, \(r.rereadMatches ? "all match" : "MISMATCH"); I/O error lines in dmesg: \(r.vm.dmesgIOErrors)"
            )
        }
        progress.say(
            "  guest: powered off (guest.sh exit \(r.guestExit)); tapdiskd exited \(r.daemonExit) after SIGTERM; \(progress.format(r.seconds)) s"
        )
    }

    static func writeGuestScript(to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
        guard fd >= 0 else { throw DemoScenario.Failure(description: "cannot create \(path): \(Errno.current)") }
        defer { close(fd) }
        let bytes = Array(guestScriptText.utf8)
        guard write(fd, bytes, bytes.count) == bytes.count else {
            throw DemoScenario.Failure(description: "cannot write \(path): \(Errno.current)")
        }
    }

    /// Runs inside the guest (busybox sh): the VM act's writes, a fixed number of them, then a
    /// remount with the page cache dropped and every file re-read from the disk.
    static let guestScriptText = """
        #!/bin/sh
        echo 1 >/proc/sys/kernel/printk
        mkfs.ext4 -q -F -b 4096 -N 64 -J size=4 -E lazy_itable_init=0,lazy_journal_init=0 /dev/vda || exit 10
        mount -t ext4 /dev/vda /mnt || exit 11
        echo "VM-DF $(df -k /mnt | awk 'NR == 2 { print $4 }')"
        i=0
        while [ $i -lt \(files) ]; do
            i=$((i + 1))
            dd if=/dev/urandom of=/tmp/chunk bs=1M count=\(fileMiB) 2>/dev/null
            sum=$(md5sum /tmp/chunk | cut -d' ' -f1)
            if dd if=/tmp/chunk of=/mnt/f$i bs=1M conv=fsync 2>/tmp/dd.err; then
                echo "VM-ACK f$i $sum"
            else
                echo "VM-FAIL f$i $(grep -v records /tmp/dd.err | head -1)"
                break
            fi
        done
        umount /mnt && echo 3 >/proc/sys/vm/drop_caches && mount -t ext4 /dev/vda /mnt || exit 12
        for f in /mnt/f*; do echo "VM-REREAD ${f#/mnt/} $(md5sum $f | cut -d' ' -f1)"; done
        echo "VM-DMESG-COUNT $(dmesg | grep -c 'I/O error, dev vda')"
        if umount /mnt; then echo "VM-UMOUNT ok"; else echo "VM-UMOUNT failed"; fi
        exit 0

        """
}
