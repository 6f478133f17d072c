import Foundation
import Glibc
import Testing

@testable import TapDisk
@testable import TapDiskMetrics

/// The scrape's deadline with real daemons: a wedged (stopped) daemon and a dead socket show as
/// down within the deadline, and the live daemon is reported as usual.
@Suite struct ExporterScrapeTests {
    @Test func aWedgedDaemonCostsOnlyItsDeadline() async throws {
        let live = try DaemonProcess(imageBytes: 16 << 20)
        let wedged = try DaemonProcess(imageBytes: 16 << 20)
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(symlink(live.socketPath, dir + "/live.sock") == 0)
        #expect(symlink(wedged.socketPath, dir + "/wedged.sock") == 0)
        #expect(symlink(dir + "/nothing-here", dir + "/dead.sock") == 0)
        wedged.signal(SIGSTOP)
        defer { wedged.signal(SIGCONT) }

        let scraper = Scraper(sockets: SocketSet(patterns: [dir]), timeoutMilliseconds: 300)
        for _ in 0..<3 {
            let start = MonotonicClock.nanoseconds()
            let samples = await scraper.scrape()
            let seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
            #expect(samples.map(\.disk) == ["dead", "live", "wedged"])
            #expect(samples.map { $0.replies != nil } == [false, true, false], "\(samples.map(\.failure))")
            // The deadline plus scheduling slack, not the sum of the daemons' times.
            #expect(seconds < 0.8, "scrape took \(seconds) s")
            let text = ExpositionFormat.prometheus.render(DaemonMetrics.families(samples))
            #expect(text.contains(#"tapdiskd_up{disk="wedged"} 0"#))
            #expect(text.contains(#"tapdiskd_up{disk="live"} 1"#))
        }
    }
}
