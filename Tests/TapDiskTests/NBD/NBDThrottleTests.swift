import Foundation
import Testing

@testable import TapDisk

/// A QoS limit holds NBD requests back exactly as it holds ring and virtqueue requests: the gate
/// (`Engine.canConsume`) and the charge (`Engine.begin`) are front-neutral, so the NBD front gets
/// them through the core. A real client (qemu-io) must see a slower disk, never an error.
@Suite(.enabled(if: Shell.which("qemu-io") != nil, "qemu-io missing (Debian: qemu-utils)"))
struct NBDThrottleTests {
    @Test func aLimitHoldsNBDRequestsBackAndEveryOneIsAnswered() throws {
        let directory = DaemonProcess.makeDirectory()
        let socket = directory + "/nbd.sock"
        // No burst: the iops bucket holds a tenth of a second, 10 requests at 100/s.
        let daemon = try DaemonProcess(
            imageBytes: 64 << 20, arguments: ["--nbd", "unix:" + socket, "--limit", "iops-total=100"],
            directory: directory)
        let writes = 40
        var commands: [String] = []
        for i in 0..<writes { commands += ["-c", "write -P 0xcd \(i * 65536) 64k"] }
        commands += ["-c", "read -P 0xcd 0 \(writes * 65536)"]
        let started = MonotonicClock.nanoseconds()
        let io = try Shell.run(
            ["qemu-io", "-f", "raw", "nbd+unix:///?socket=" + socket] + commands, timeoutSeconds: 60)
        let seconds = Double(MonotonicClock.nanoseconds() - started) / 1e9
        #expect(
            io.status == 0 && !io.stdout.contains("failed") && !io.stdout.contains("mismatch"),
            "\(io.stdout)\(io.stderr)")
        let stats = try daemon.client().call("stats")
        let counters = try #require(stats["counters"])
        #expect((counters["write-requests"]?.int64Value ?? 0) >= Int64(writes))
        #expect((counters["responses-error"]?.int64Value ?? -1) == 0)
        #expect((counters["throttle-delayed-requests"]?.int64Value ?? 0) > 0, "the limit held nothing back")
        // 41 requests at 100/s after a 10-request bucket: at least 0.3 s.
        #expect(seconds >= 0.25, "\(seconds) s: the limit did not slow the client")
    }
}
