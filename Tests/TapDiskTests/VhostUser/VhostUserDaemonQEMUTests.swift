import Foundation
import Glibc
import Testing

@testable import TapDisk

/// QEMU and a real Linux guest against the real daemon (`tapdiskd --vhost-user-blk`): the engine
/// serves the virtqueue. What the other suites do not cover: QEMU killed in the middle of its
/// I/O and a new QEMU served after the drain, a read-only disk, polling on, and `ctl` while a
/// guest is attached.
@Suite(
    .serialized, .enabled(if: VhostUserGuest.available, "needs root, qemu-system-x86_64 and `scripts/guest.sh build`"))
struct VhostUserDaemonQEMUTests {
    /// A daemon serving a fresh sparse image over vhost-user (the image is removed with it).
    private func daemon(imageBytes: Int, arguments: [String] = []) throws -> (DaemonProcess, String) {
        let directory = DaemonProcess.makeDirectory()
        let vhost = directory + "/vhost.sock"
        let d = try DaemonProcess(
            imageBytes: imageBytes, arguments: ["--vhost-user-blk", vhost] + arguments, directory: directory)
        return (d, vhost)
    }

    /// Boots the guest against `socket`; the guest runs `script` (default: mkfs, fsync'd write,
    /// reread checksum, e2fsck). Returns QEMU's exit status and the console.
    private func boot(_ socket: String, script: String? = nil, killAfterSeconds: Int? = nil) throws -> (
        status: Int32, output: String
    ) {
        var arguments = (killAfterSeconds.map { ["TAPDISK_GUEST_TIMEOUT=\($0)"] } ?? [])
        arguments += [VhostUserGuest.repository.appendingPathComponent("scripts/guest.sh").path, "run", socket]
        if let script { arguments.append(script) }
        let result = try Shell.run(["/usr/bin/env"] + arguments)
        return (result.status, result.stdout + result.stderr)
    }

    private func status(_ d: DaemonProcess) throws -> JSONObject { try d.client().call("status") }
    private func stats(_ d: DaemonProcess, _ name: String) throws -> UInt64 {
        try d.client().call("stats")["counters"]?.objectValue?[name]?.uint64Value ?? 0
    }

    @Test(.timeLimit(.minutes(3))) func qemuKilledMidIOIsDrainedAndTheNextQEMUIsServed() throws {
        let (d, vhost) = try daemon(imageBytes: 256 << 20)
        #expect(try status(d)["attached"] == .bool(false))
        // Killed 6 s in: booting, or already writing through the ring.
        let (killed, killedOutput) = try boot(vhost, killAfterSeconds: 6)
        #expect(killed != 0, "\(killedOutput.suffix(2000))")
        let idle = try DaemonTest.waitUntil(seconds: 10) {
            let s = try status(d)
            return s["state"] == .string("idle") && s["attached"] == .bool(false) && s["in-flight"] == .integer(0)
        }
        let after = try status(d)
        #expect(idle, "not idle after QEMU was killed: \(after)")
        let answeredBefore = try stats(d, "responses-okay")
        let (rc, output) = try boot(vhost)
        #expect(rc == 0, "\(output.suffix(3000))")
        #expect(output.contains("checksum written=") && output.contains("serial=tapdiskd"))
        #expect(try stats(d, "responses-okay") > answeredBefore)
        #expect(try stats(d, "responses-error") == 0)
        #expect(try stats(d, "invalid-requests") == 0)
        #expect(try stats(d, "flush-requests") > 0)
        #expect(d.log.contains("vhost-user front-end gone"))
        d.signal(SIGTERM)
        #expect(d.waitForExit() == 0)
        let fsck = try Shell.run(["e2fsck", "-fn", d.imagePath])
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
        #expect(!FileManager.default.fileExists(atPath: vhost), "the vhost-user socket file outlived the daemon")
        print(
            "vhost-user daemon reconnect: QEMU killed (rc \(killed)) after \(answeredBefore) OKAY answers; the next QEMU's guest passed"
        )
    }

    @Test(.timeLimit(.minutes(3))) func readOnlyDiskRefusesTheGuestsWrites() throws {
        let (d, vhost) = try daemon(imageBytes: 64 << 20, arguments: ["--readonly"])
        let script = d.directory + "/ro.sh"
        try VhostUserGuest.readOnlyScript.write(toFile: script, atomically: true, encoding: .utf8)
        let (rc, output) = try boot(vhost, script: script)
        #expect(rc == 0, "\(output.suffix(3000))")
        #expect(output.contains("ro=1") && output.contains("read-ok") && output.contains("write-refused"))
        #expect(try stats(d, "read-requests") > 0)
        #expect(try stats(d, "write-requests") == 0)
    }

    /// Polling on: the loop spins on the virtqueue and the AIO ring instead of sleeping, and must
    /// still arm guest notifications before it sleeps (a lost kick would hang the guest).
    @Test(.timeLimit(.minutes(3))) func pollingServesTheGuest() throws {
        let (d, vhost) = try daemon(imageBytes: 256 << 20, arguments: ["--poll-us", "50"])
        let (rc, output) = try boot(vhost)
        #expect(rc == 0, "\(output.suffix(3000))")
        #expect(output.contains("checksum written="))
        let polls = try stats(d, "poll-hits") + stats(d, "poll-misses")
        #expect(polls > 0, "never polled")
    }

    /// `ctl` while a guest is attached: `status` shows the front, `attach` is refused `busy`,
    /// and a `pause` stops the guest's I/O until `resume`.
    @Test(.timeLimit(.minutes(3))) func controlWhileAGuestIsAttached() throws {
        let (d, vhost) = try daemon(imageBytes: 256 << 20)
        let script = d.directory + "/slow.sh"
        // The guest writes for a while, so the test can look at the daemon while it is attached.
        try """
        #!/bin/sh
        i=0
        while [ $i -lt 40 ]; do
            dd if=/dev/urandom of=/dev/vda bs=64k count=4 seek=$((i * 4)) conv=fsync 2>/dev/null || exit 1
            i=$((i + 1))
            sleep 0.2
        done
        echo writes-done

        """.write(toFile: script, atomically: true, encoding: .utf8)
        let guest = Thread {
            _ = try? Shell.run(
                [
                    "/usr/bin/env", VhostUserGuest.repository.appendingPathComponent("scripts/guest.sh").path, "run",
                    vhost, script,
                ])
        }
        guest.start()
        let attached = try DaemonTest.waitUntil(seconds: 60) { try status(d)["attached"] == .bool(true) }
        #expect(attached)
        #expect(try status(d)["front"] == .string("vhost-user-blk"))
        let attach = try d.client().request("attach", ["ring-page-order": 0, "data-pages": 1])
        #expect(DaemonTest.code(attach) == "busy", "\(attach)")
        // Pause once the guest is writing; nothing is answered while paused.
        _ = try DaemonTest.waitUntil(seconds: 60) { try stats(d, "write-requests") > 0 }
        #expect(try d.client().call("pause")["ok"] == .bool(true))
        let before = try stats(d, "responses-okay")
        usleep(500_000)
        #expect(try stats(d, "responses-okay") == before, "answered while paused")
        #expect(try status(d)["state"] == .string("paused"))
        #expect(try d.client().call("resume")["ok"] == .bool(true))
        let done = try DaemonTest.waitUntil(seconds: 90) { try status(d)["attached"] == .bool(false) }
        #expect(done, "the guest did not finish")
        #expect(try stats(d, "write-requests") >= 40)
        #expect(try stats(d, "responses-error") == 0)
    }
}
