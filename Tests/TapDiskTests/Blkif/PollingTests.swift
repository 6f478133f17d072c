import Foundation
import Glibc
import Testing

@testable import TapDisk

/// `--poll-us` and `--cpu` on the real daemon: polling spins only while I/O is active, is
/// counted, and can be turned off; pinning lands where asked.
@Suite struct PollingTests {
    @Test func cpuListParsing() {
        #expect(CPUList.parse("0") == [0])
        #expect(CPUList.parse("3,1-2,1") == [1, 2, 3])
        #expect(CPUList.parse("0-0") == [0])
        for bad in ["", "a", "1-", "-1", "2-1", "1,,2", "1024", "0x1"] { #expect(CPUList.parse(bad) == nil, "\(bad)") }
    }

    func pollStats(_ client: ControlClient) throws -> (micros: UInt64, hits: UInt64, misses: UInt64) {
        let c = try #require(try client.call("stats")["counters"])
        return (
            c["poll-microseconds"]?.uint64Value ?? .max, c["poll-hits"]?.uint64Value ?? .max,
            c["poll-misses"]?.uint64Value ?? .max
        )
    }

    /// Polling spins while requests flow and stops when they stop: an attached, idle daemon with
    /// a 10 ms window uses (almost) no CPU.
    @Test func pollsOnlyWhileActive() throws {
        let daemon = try DaemonProcess(imageBytes: 4 << 20, arguments: ["--poll-us", "10000"])
        let d = try DiskDriver(socketPath: daemon.socketPath)
        for i in 0..<200 { #expect(d.roundTrip(sector: UInt64(i % 64) * 8, seed: UInt64(i))) }
        let busy = try pollStats(d.control)
        #expect(busy.micros > 0 && busy.hits + busy.misses > 0, "no polling during I/O: \(busy)")
        usleep(200_000)  // the last request's window ends
        let before = try pollStats(d.control)
        let share = DaemonTest.cpuShare(pid: daemon.pid, seconds: 1.0)
        let after = try pollStats(d.control)
        #expect(share < 0.05, "an idle daemon used \(Int(share * 100))% CPU")
        #expect(after.micros - before.micros < 50_000, "spun \(after.micros - before.micros) µs while idle")
    }

    @Test func pollZeroNeverSpins() throws {
        let daemon = try DaemonProcess(imageBytes: 4 << 20, arguments: ["--poll-us", "0"])
        let d = try DiskDriver(socketPath: daemon.socketPath)
        for i in 0..<50 { #expect(d.roundTrip(sector: UInt64(i) * 8, seed: UInt64(i))) }
        let s = try pollStats(d.control)
        #expect(s.micros == 0 && s.hits == 0 && s.misses == 0)
    }

    @Test func cpuPinsTheDaemon() throws {
        let daemon = try DaemonProcess(imageBytes: 1 << 20, arguments: ["--cpu", "0"])
        let status = try #require(ProcFile.read("/proc/\(daemon.pid)/status"))
        let line = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
        #expect(line.map { $0.split(separator: "\t").last.map(String.init) } == "0")
    }

    @Test func badPollAndCPUValuesAreUsageErrors() throws {
        for args in [["--poll-us", "-1"], ["--poll-us", "10001"], ["--cpu", "x"], ["--cpu", "2-1"]] {
            let r = try Tapdiskd.run(["--image", "/nonexistent", "--socket", "/tmp/x.sock"] + args)
            #expect(r.status == 64, "\(args): exit \(r.status)")
            #expect(r.stderrLines.count == 1 && r.stderr.contains(args[0]), "\(args): \(r.stderr)")
        }
    }

    /// A CPU the machine does not have: the daemon does not start (sched_setaffinity's EINVAL).
    @Test func pinningToAMissingCPUFailsTheStart() throws {
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let directory = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let r = try Tapdiskd.run(["--image", image, "--socket", directory + "/s.sock", "--cpu", "1000"])
        #expect(r.status == 1 && r.stderrLines.count == 1 && r.stderr.contains("--cpu 1000"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: directory + "/s.sock"))
    }
}
