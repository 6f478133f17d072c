import Foundation
import Testing

@testable import TapDisk

/// Issue 18 §4 (planned upgrade) under a real guest: `scripts/restart-stall.sh restart 3`. A
/// supervisor of the script's own (`scripts/socket-supervisor.py`, doing what
/// `tapdiskd-vhost@.socket` does) holds the control and vhost-user listeners and passes them to
/// each daemon with LISTEN_FDS; the daemon is restarted with SIGTERM three times while the guest
/// writes, fdatasyncs and reads back. The script exits 0 only if after every restart QEMU
/// reconnected to the new daemon through the held socket, the guest finished with no I/O error
/// and no mismatch, and every block in the image is intact. Stall figures are printed, never
/// asserted: they come from the 20-restart runs in docs/performance.md. About 25 s under TCG.
@Suite(
    .serialized,
    .enabled(
        if: VhostUserGuest.available && Shell.which("cc") != nil && Shell.which("python3") != nil,
        "needs root, QEMU, scripts/guest.sh's cache, cc and python3"))
struct VhostUserSocketActivationRestartTests {
    @Test(.timeLimit(.minutes(5))) func restartedDaemonTakesTheHeldSocketAndTheGuestFinishes() throws {
        let script = VhostUserGuest.repository.appendingPathComponent("scripts/restart-stall.sh").path
        let r = try Shell.run([script, "restart", "3", DaemonProcess.binary], timeoutSeconds: 240)
        let summary = r.stdout.split(separator: "\n").filter {
            $0.hasPrefix("guest-visible") || $0.hasPrefix("restarts:") || $0.hasPrefix("image blocks")
        }
        print("vhost-user restarts under a guest: \(summary.joined(separator: "; "))")
        #expect(r.status == 0, "\(r.stdout.suffix(3000))\(r.stderr.suffix(1000))")
        #expect(r.stdout.contains("restarts: 3 (no reconnect after 0)"), "\(r.stdout.suffix(2000))")
    }
}
