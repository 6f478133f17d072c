import Foundation
import Testing

@testable import TapDisk

/// Issue 18's NBD proof: `scripts/nbd-reconnect.py` kills `tapdiskd serve --nbd` with SIGKILL 50
/// times at random points while a Linux guest, whose disk is QEMU's NBD client
/// (`-blockdev driver=nbd,...,reconnect-delay=5`), writes, fsyncs and reads back. A supervisor in
/// the script keeps the listening socket and passes it to every new daemon (socket activation,
/// `LISTEN_FDNAMES=nbd`), so QEMU's reconnect waits in the backlog. The script exits 0 only if
/// the guest saw no error (no failed round, no kernel I/O error, no failed request in QEMU's
/// blockstats), every slot the guest last wrote matches the image on the host, and every kill was
/// followed by a completed request. About two minutes under TCG.
@Suite(.serialized, .enabled(if: VhostUserGuest.available, "needs root, QEMU and scripts/guest.sh's cache"))
struct NBDGuestReconnectTests {
    @Test(.timeLimit(.minutes(10))) func fiftyKillsUnderAnNBDGuestLoseNothing() throws {
        let script = VhostUserGuest.repository.appendingPathComponent("scripts/nbd-reconnect.py").path
        let r = try Shell.run(
            ["python3", script, "--server", "tapdiskd", "--kills", "50", "--tapdiskd", DaemonProcess.binary],
            timeoutSeconds: 540)
        let summary = r.stdout.split(separator: "\n").filter { $0.hasPrefix("kills:") || $0.hasPrefix("stall") }
        print("NBD 50 kills under a guest: \(summary.joined(separator: "; "))")
        #expect(r.status == 0, "\(r.stdout.suffix(3000))\(r.stderr.suffix(1000))")
    }
}
