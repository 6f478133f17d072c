import Glibc
import TapDisk

/// The demo's VM act: the 2006 bug replayed with a real Linux guest instead of the library's
/// frontend. QEMU's vhost-user-blk hands the guest's virtqueue to tapdiskd; the guest makes ext4
/// on a sparse image that is much bigger than the host filesystem under it and writes 2 MiB files
/// with `dd conv=fsync` until one fails. In 2006 that dd "succeeded". Here the guest must see the
/// I/O error, and every file it was told was written must be on the host's disk, intact.
struct DemoVMAct {
    /// What the act saw. The guest's side comes from its console, the host's from the daemon's
    /// control socket and from reading the image after everything has stopped.
    struct Result {
        var imageMiB = 0
        var hostFreeKiB: UInt64 = 0
        var guestExit: Int32 = -1
        var guestFreeKiB: Int? = nil
        /// Files the guest's dd (with fsync) reported written, with the md5 of what it wrote.
        var acknowledged: [(name: String, md5: String)] = []
        /// The first file whose dd failed, and what dd said.
        var failedFile: String? = nil
        var failure: String? = nil
        var dmesg: [String] = []
        var dmesgIOErrors = 0
        var unmounted = false
        var firstIOError: JSONObject? = nil
        var ioErrorEvents = 0
        var statusAfter: JSONObject = [:]
        var countersAfter: JSONObject = [:]
        var daemonExit: Int32 = -1
        var fsckStatus: Int32 = -1
        var intact = 0
        var seconds = 0.0

        var guestSawEIO: Bool { failure.map { $0.contains("I/O error") || $0.contains("Input/output error") } ?? false }
    }

    /// A 256 MiB guest disk on a 32 MiB host ext4: the 2006 ratio (1 GB on 200 MB), scaled so that
    /// TCG fills the host filesystem in a few seconds.
    static let imageMiB = 256
    static let filesystemMiB = 32
    static let fileMiB = 2

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
        let control = filesystem.directory + "/vm.sock"
        let vhost = filesystem.directory + "/vm.vhost.sock"
        let script = filesystem.directory + "/guest-script.sh"
        let console = filesystem.directory + "/guest-console.log"
        do {
            try ImageCreator.create(path: image, sizeBytes: UInt64(Self.imageMiB) << 20, preallocation: .off)
        } catch {
            throw DemoScenario.Failure(description: error.message)
        }
        result.hostFreeKiB = filesystem.freeBytes >> 10
        progress.say(
            "  host filesystem: \(filesystem.mountPoint) (ext4 -m 0, \(result.hostFreeKiB) KiB free); guest disk: a \(Self.imageMiB) MiB sparse image on it"
        )
        try Self.writeGuestScript(to: script)
        let start = MonotonicClock.nanoseconds()
        let daemon = try DemoChild(
            [
                DemoScenario.selfExecutable, "--image", image, "--socket", control, "--vhost-user-blk", vhost,
                "--on-nospace", "report", "--log-level", "notice",
            ],
            logPath: filesystem.directory + "/tapdiskd-vm.log")
        let toolstack = try DemoScenario.connect(control, daemon: daemon)
        try toolstack.call("subscribe")
        guard access(vhost, F_OK) == 0 else {
            throw DemoScenario.Failure(description: "tapdiskd is not listening on \(vhost)")
        }
        progress.say(
            "  tapdiskd --on-nospace report --vhost-user-blk \(vhost); QEMU boots the guest (TCG, about 10 s)")
        // guest.sh kills QEMU after this long; the demo must end even if the guest hangs.
        setenv("TAPDISK_GUEST_TIMEOUT", "150", 1)
        let guest = try DemoChild([guestScript, "run", vhost, script], logPath: console)
        while true {
            if demoInterrupted.load(ordering: .relaxed) { throw DemoScenario.Failure(description: "interrupted") }
            if let status = guest.wait(timeoutSeconds: 0) {
                result.guestExit = status
                break
            }
            while let event = try toolstack.nextEvent(timeoutMilliseconds: 100) { note(event, &result) }
        }
        Self.parseConsole(Subprocess.readFile(console), into: &result)
        result.statusAfter = try toolstack.call("status")
        result.countersAfter = try toolstack.call("stats")["counters"]?.objectValue ?? [:]
        for event in toolstack.drainQueuedEvents() { note(event, &result) }
        result.daemonExit = daemon.terminate(timeoutSeconds: 30)
        result.seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
        describeGuest(result, console: console)
        // What survives an unmount of the host filesystem was on disk, not in a cache.
        try filesystem.remount()
        result.fsckStatus = try Subprocess.run(["e2fsck", "-fn", image], allowFailure: true)
        result.intact = try Self.countIntact(result.acknowledged, image: image, scratch: filesystem.directory)
        describeHost(result)
        return result
    }

    /// One line per `VM-` marker the guest script prints; anything else on the console (SeaBIOS,
    /// the kernel) is ignored.
    static func parseConsole(_ text: String, into result: inout Result) {
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ", maxSplits: 2).map(String.init)
            switch words.first {
            case "VM-DF": result.guestFreeKiB = words.count > 1 ? Int(words[1]) : nil
            case "VM-ACK" where words.count == 3: result.acknowledged.append((words[1], words[2]))
            case "VM-FAIL" where words.count >= 2:
                result.failedFile = words[1]
                result.failure = words.count == 3 ? words[2] : "(no message)"
            case "VM-DMESG" where words.count >= 2:
                // Drop the "[   10.639530] " timestamp.
                let message = line.dropFirst("VM-DMESG ".count)
                result.dmesg.append(String(message.split(separator: "]", maxSplits: 1).last ?? message).trimmed)
            case "VM-DMESG-COUNT": result.dmesgIOErrors = words.count > 1 ? Int(words[1]) ?? 0 : 0
            case "VM-UMOUNT": result.unmounted = words.count > 1 && words[1] == "ok"
            default: break
            }
        }
    }

    /// Reads each acknowledged file out of the guest's ext4 with debugfs (no mount, nothing
    /// written) and compares its md5 with what the guest computed before writing it.
    static func countIntact(_ files: [(name: String, md5: String)], image: String, scratch: String) throws -> Int {
        var intact = 0
        let copy = scratch + "/dumped"
        for file in files {
            unlink(copy)
            try Subprocess.run(["debugfs", "-R", "dump /\(file.name) \(copy)", image], allowFailure: true)
            guard access(copy, R_OK) == 0 else { continue }
            let sum = try Subprocess.output(["md5sum", copy]).split(separator: " ").first.map(String.init)
            if sum == file.md5 { intact += 1 }
        }
        unlink(copy)
        return intact
    }

    private func note(_ event: JSONObject, _ result: inout Result) {
        guard event["event"]?.stringValue == "io-error" else { return }
        result.ioErrorEvents += 1
        if result.firstIOError == nil { result.firstIOError = event }
    }

    private func describeGuest(_ r: Result, console: String) {
        if let free = r.guestFreeKiB {
            progress.say(
                "  guest: mkfs.ext4 /dev/vda; its df shows \(free >> 10) MiB free, the host filesystem \(r.hostFreeKiB >> 10) MiB"
            )
        }
        let written = r.acknowledged.count
        progress.say(
            "  guest: dd conv=fsync of \(Self.fileMiB) MiB files: \(written) succeeded (\(written * Self.fileMiB) MiB)"
                + (written > 0 ? ", f1..f\(written)" : ""))
        if let file = r.failedFile, let failure = r.failure {
            progress.say("  guest: \(file): \(failure)   <- in 2006 this dd \"succeeded\"")
        } else {
            progress.say("  guest: no write failed (exit \(r.guestExit); console: \(console))")
        }
        for line in r.dmesg.prefix(2) { progress.say("  guest dmesg: \(line)") }
        if r.dmesgIOErrors > 2 { progress.say("  guest dmesg: ... \(r.dmesgIOErrors) such lines in all") }
        if let e = r.firstIOError {
            progress.say(
                "  toolstack: io-error event operation=\(e["operation"]?.stringValue ?? "?") errno=\(e["errno"]?.stringValue ?? "?") nospace=\(e["nospace"]?.boolValue == true) action=\(e["action"]?.stringValue ?? "?") (\(r.ioErrorEvents) events after rate limiting)"
            )
        } else {
            progress.say("  toolstack: no io-error event")
        }
        let s = r.statusAfter
        progress.say(
            "  ctl status: state \(s["state"]?.stringValue ?? "?"), io-status \(s["io-status"]?.stringValue ?? "?"), in-flight \(s["in-flight"]?.int64Value ?? -1), held \(s["held"]?.int64Value ?? -1)"
        )
        progress.say(
            "  guest: umount \(r.unmounted ? "ok" : "FAILED"), powered off (guest.sh exit \(r.guestExit)); tapdiskd exited \(r.daemonExit) after SIGTERM; \(progress.format(r.seconds)) s"
        )
    }

    private func describeHost(_ r: Result) {
        progress.say(
            "  host, after umount and mount: e2fsck -fn on the guest's disk: \(r.fsckStatus == 0 ? "clean" : "exit \(r.fsckStatus)")"
        )
        progress.say(
            "  host: \(r.intact) of \(r.acknowledged.count) files the guest was told were written are intact (md5 via debugfs)"
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

    /// Runs inside the guest (busybox sh). Lines for the host start with `VM-`; kernel messages
    /// are kept off the console so that they cannot split those lines, and read with dmesg.
    /// The 4 MiB journal and the initialized inode tables are written at mkfs time, so the
    /// host blocks under them exist before the host filesystem fills: what fails is file data.
    static let guestScriptText = """
        #!/bin/sh
        echo 1 >/proc/sys/kernel/printk
        mkfs.ext4 -q -F -b 4096 -N 64 -J size=4 -E lazy_itable_init=0,lazy_journal_init=0 /dev/vda || exit 10
        mount -t ext4 /dev/vda /mnt || exit 11
        echo "VM-DF $(df -k /mnt | awk 'NR == 2 { print $4 }')"
        i=0
        while [ $i -lt 200 ]; do
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
        dmesg | grep 'I/O error, dev vda' | head -2 | sed 's/^/VM-DMESG /'
        echo "VM-DMESG-COUNT $(dmesg | grep -c 'I/O error, dev vda')"
        if umount /mnt; then echo "VM-UMOUNT ok"; else echo "VM-UMOUNT failed"; fi
        exit 0

        """
}
