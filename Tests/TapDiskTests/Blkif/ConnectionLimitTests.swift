import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// A limit on control connections, and fd exhaustion that neither spins the loop nor deafens
/// the control socket.
@Suite struct ConnectionLimitTests {
    static func logCount(_ log: String, _ phrase: String) -> Int {
        log.split(separator: "\n").filter { $0.contains(phrase) }.count
    }

    @Test func connectionsOverTheLimitAreRefusedWithBusy() throws {
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let daemon = try DaemonProcess(image: image, arguments: ["--max-control-connections", "16"])
        defer { daemon.forceStop() }
        // DaemonProcess returns once the daemon has processed its start-up probe's close, so the
        // eight below are all the connections there are.
        var clients: [ControlClient] = []
        for _ in 0..<16 {
            let c = try daemon.client()
            try c.call("info")
            clients.append(c)
        }
        for _ in 0..<3 {
            let extra = try daemon.client()
            let reply = try extra.request("status", timeoutMilliseconds: 5000)
            #expect(DaemonTest.code(reply) == "busy", "\(reply)")
            #expect(reply["error"]?["message"]?.stringValue?.contains("too many control connections") == true)
            #expect(reply["tag"] != nil, "the refusal echoes the request's tag")
        }
        // `ctl status` says so in one line and exits 1 instead of hanging.
        let ctl = try Tapdiskd.run(["ctl", "--socket", daemon.socketPath, "status"], timeoutSeconds: 10)
        #expect(ctl.status == 1 && ctl.stderrLines.count == 1 && ctl.stderr.contains("busy"), "\(ctl.stderr)")
        // Admitted connections still work; closing one makes room.
        #expect(try clients[0].call("status")["state"] == .string("idle"))
        clients.removeLast()
        var admitted = false
        DaemonTest.waitUntil(seconds: 5) {
            guard let c = try? daemon.client(), let r = try? c.request("stats") else { return false }
            admitted = r["ok"] == .bool(true)
            if admitted {
                #expect(r["counters"]?["control-connections-refused"]?.uint64Value ?? 0 >= 4)
            }
            return admitted
        }
        #expect(admitted)
        #expect(Self.logCount(daemon.log, "control connection limit reached") >= 1)
    }

    /// Far more connections than fds, the way the hang was first reproduced. Before, accept4
    /// failed with EMFILE thousands of times a second at ~97% CPU and `ctl status` hung; now the
    /// daemon backs off, answers `status` with a busy error, warns once, counts the episode, and
    /// recovers.
    @Test(.enabled(if: Shell.which("prlimit") != nil)) func fdExhaustionBacksOffAndStillAnswers() throws {
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let daemon = try DaemonProcess(
            image: image, arguments: ["--cache", "writeback"], launcher: ["prlimit", "--nofile=40"])
        defer { daemon.forceStop() }
        // DaemonProcess returns once the daemon has processed its start-up probe's close: no slot
        // it frees later can end the episode early.
        var held: [Int32] = []
        defer { for fd in held { close(fd) } }
        for _ in 0..<60 {
            let fd = clibaio_unix_connect(daemon.socketPath)
            if fd >= 0 { held.append(fd) }
        }
        #expect(held.count >= 50)
        // The episode has begun when the daemon says so; CPU is measured from there.
        #expect(
            DaemonTest.waitUntil(seconds: 10) { Self.logCount(daemon.log, "out of file descriptors") == 1 },
            "no out-of-fds warning: \(daemon.log.suffix(1500))")
        let share = DaemonTest.cpuShare(pid: daemon.pid, seconds: 1.5)
        #expect(share < 0.2, "the daemon used \(Int(share * 100))% CPU while out of fds")
        let start = MonotonicClock.nanoseconds()
        let ctl = try Tapdiskd.run(["ctl", "--socket", daemon.socketPath, "status"], timeoutSeconds: 10)
        let seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
        #expect(ctl.status == 1, "ctl status: exit \(ctl.status) (137 = hung and killed)")
        #expect(ctl.stderr.contains("busy") && ctl.stderr.contains("out of file descriptors"), "\(ctl.stderr)")
        #expect(seconds < 3, "answered in \(seconds) s")
        let again = try Tapdiskd.run(["ctl", "--socket", daemon.socketPath, "status"], timeoutSeconds: 10)
        #expect(again.status == 1 && again.stderr.contains("out of file descriptors"))
        #expect(Self.logCount(daemon.log, "out of file descriptors") == 1, "one warning per episode")
        // Once the clients go, the daemon serves again and reports the episode.
        for fd in held { close(fd) }
        held.removeAll()
        var stats: JSONObject? = nil
        DaemonTest.waitUntil(seconds: 5) {
            guard let c = try? daemon.client(), let r = try? c.request("stats"), r["ok"] == .bool(true) else {
                return false
            }
            stats = r
            return true
        }
        #expect(stats?["counters"]?["fd-exhaustion-episodes"]?.uint64Value == 1)
        #expect(stats?["counters"]?["control-connections-refused"]?.uint64Value ?? 0 >= 2)
        #expect(daemon.log.contains("file descriptors available again"))
        #expect(daemon.terminate() == 0)
    }

    /// The soft RLIMIT_NOFILE is raised to the hard limit at start.
    @Test(.enabled(if: Shell.which("prlimit") != nil)) func softFileLimitIsRaisedToTheHardLimit() throws {
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let daemon = try DaemonProcess(image: image, launcher: ["prlimit", "--nofile=100:2048"])
        defer { daemon.forceStop() }
        let limits = try #require(ProcFile.read("/proc/\(daemon.pid)/limits"))
        let line = try #require(limits.split(separator: "\n").first { $0.hasPrefix("Max open files") })
        let numbers = line.split(separator: " ").compactMap { Int($0) }
        #expect(numbers == [2048, 2048], "\(line)")
    }
}
