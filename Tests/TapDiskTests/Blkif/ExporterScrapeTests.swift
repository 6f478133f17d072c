import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The scrape's per-daemon deadline, with real daemons and the real exporter: three wedged
/// (stopped) daemons and a dead socket cost one deadline together, not one each, and the live
/// daemon is reported as usual. Timed from outside the exporter's process, so the test's own
/// task pool does not enter the measurement.
@Suite struct ExporterScrapeTests {
    @Test func wedgedDaemonsCostOneDeadlineTogether() throws {
        let live = try DaemonProcess(imageBytes: 16 << 20)
        let wedged = try (0..<3).map { _ in try DaemonProcess(imageBytes: 16 << 20) }
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(symlink(live.socketPath, dir + "/live.sock") == 0)
        for (i, d) in wedged.enumerated() { #expect(symlink(d.socketPath, dir + "/wedged\(i).sock") == 0) }
        #expect(symlink(dir + "/nothing-here", dir + "/dead.sock") == 0)
        let deadline = 0.3
        let exporter = try ExporterProcess(sockets: [dir], timeoutMilliseconds: Int(deadline * 1000))
        for d in wedged { d.signal(SIGSTOP) }
        defer { for d in wedged { d.signal(SIGCONT) } }

        for _ in 0..<3 {
            let start = MonotonicClock.nanoseconds()
            let r = try LoopbackHTTP.get(port: exporter.port, path: "/metrics")
            let seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
            #expect(r.status == 200)
            // Waiting on the three in turn would take at least 3 deadlines.
            #expect(seconds < 2.5 * deadline, "scrape took \(seconds) s")
            #expect(seconds >= deadline, "scrape took \(seconds) s: it did not wait for the wedged daemons")
            let lines = Set(r.body.split(separator: "\n"))
            for i in 0..<3 { #expect(lines.contains("tapdiskd_up{disk=\"wedged\(i)\"} 0")) }
            #expect(lines.contains(#"tapdiskd_up{disk="dead"} 0"#))
            #expect(lines.contains(#"tapdiskd_up{disk="live"} 1"#))
            #expect(lines.contains { $0.hasPrefix(#"tapdiskd_requests_total{disk="live""#) })
            print("scrape with 3 wedged daemons (deadline \(deadline) s): \(seconds) s")
        }
    }
}
