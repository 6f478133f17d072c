import Foundation
import Testing

@testable import TapDisk

/// Issue 18's real-guest proof: `scripts/vhost-kill-run.sh` kills the daemon with SIGKILL 50
/// times at random points while a Linux guest writes, fsyncs and reads back, and restarts it;
/// QEMU reconnects and the new daemon takes over the requests in flight through the
/// INFLIGHT_SHMFD region. The script exits 0 only if every round the guest verified was right,
/// every kill was followed by a reconnect, no violation was logged and the guest ended rc=0.
/// About two minutes under TCG.
@Suite(.serialized, .enabled(if: VhostUserGuest.available, "needs root, QEMU and scripts/guest.sh's cache"))
struct VhostUserGuestKillTests {
    @Test(.timeLimit(.minutes(10))) func fiftyKillsUnderAGuestLoseAndRepeatNothing() throws {
        let script = VhostUserGuest.repository.appendingPathComponent("scripts/vhost-kill-run.sh").path
        let r = try Shell.run([script, "50", DaemonProcess.binary], timeoutSeconds: 540)
        let summary = r.stdout.split(separator: "\n").filter { $0.hasPrefix("kills:") || $0.hasPrefix("daemon:") }
        print("vhost-user 50 kills under a guest: \(summary.joined(separator: "; "))")
        #expect(r.status == 0, "\(r.stdout.suffix(3000))\(r.stderr.suffix(1000))")
    }
}
