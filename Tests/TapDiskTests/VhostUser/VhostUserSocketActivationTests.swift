import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// Socket activation of the vhost-user socket without QEMU: `scripts/socket-supervisor.py`
/// holds the control and vhost-user listeners as `tapdiskd-vhost@.socket` does and passes them
/// to each daemon with LISTEN_FDS=2. A front-end keeps its guest memory and ring while the
/// daemon is restarted (SIGTERM, as for an upgrade) and then killed; each time it reconnects to
/// the same socket file, the next daemon serves it, and what was written before is read back.
@Suite(.serialized, .enabled(if: Shell.which("python3") != nil, "needs python3"), .timeLimit(.minutes(2)))
struct VhostUserSocketActivationTests {
    static let ok = VirtioBlkStatus.ok.rawValue

    /// The supervisor with its FIFO and files in `dir`, serving `image`.
    final class Supervisor {
        let dir: String
        let process = Process()
        var vhostSocket: String { dir + "/v.sock" }
        var log: String { (try? String(contentsOfFile: dir + "/daemon.log", encoding: .utf8)) ?? "" }
        var events: String { (try? String(contentsOfFile: dir + "/events", encoding: .utf8)) ?? "" }
        var daemonPID: Int32? {
            (try? String(contentsOfFile: dir + "/events.pid", encoding: .utf8)).flatMap {
                Int32($0.trimmingCharacters(in: .whitespacesAndNewlines))
            }
        }

        init(dir: String, image: String) throws {
            self.dir = dir
            guard mkfifo(dir + "/cmd", 0o600) == 0 else { throw Errno.current }
            let script = VhostUserGuest.repository.appendingPathComponent("scripts/socket-supervisor.py").path
            process.executableURL = URL(fileURLWithPath: Shell.which("python3")!)
            process.arguments = [
                script, "--control", dir + "/c.sock", "--vhost-user", vhostSocket, "--commands", dir + "/cmd",
                "--events", dir + "/events", "--log", dir + "/daemon.log", "--", DaemonProcess.binary, "--image", image,
                "--log-level", "debug",
            ]
            try process.run()
        }

        func send(_ command: String) {
            let fd = open(dir + "/cmd", O_WRONLY | O_NONBLOCK)
            guard fd >= 0 else { return }
            _ = (command + "\n").withCString { write(fd, $0, strlen($0)) }
            close(fd)
        }

        /// `stop`, and if that does not end it, the daemon and the supervisor by their pids.
        func finish() -> Int32? {
            send("stop")
            let stopped = DaemonTest.waitUntil(seconds: 15) { !process.isRunning }
            if !stopped {
                if let pid = daemonPID { kill(pid, SIGKILL) }
                process.terminate()
            }
            process.waitUntilExit()
            return stopped ? process.terminationStatus : nil
        }
    }

    @Test func restartedAndKilledDaemonsServeTheSameFrontEndOnTheHeldSocket() throws {
        let image = try EngineHarness.makeTemporaryImage(bytes: 4 << 20)
        defer { unlink(image) }
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = try Supervisor(dir: dir, image: image)
        var finished = false
        defer { if !finished { _ = s.finish() } }
        #expect(DaemonTest.waitUntil(seconds: 15) { s.log.contains("serving") }, "\(s.log)")
        var before = stat()
        #expect(lstat(s.vhostSocket, &before) == 0)

        let f = try VhostUserTestFrontend(socketPath: s.vhostSocket)
        try f.startWithInflight()
        let first = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
        #expect(f.write(sector: 64, first) == Self.ok)

        for (round, command) in ["restart", "kill"].enumerated() {
            let old = try #require(s.daemonPID)
            s.send(command)
            #expect(
                DaemonTest.waitUntil(seconds: 15) { s.daemonPID != old && s.daemonPID != nil },
                "\(command): no new daemon: \(s.events)")
            try f.reconnect(to: s.vhostSocket)
            let back = f.read(sector: 64, bytes: 8192)
            #expect(back?.0 == Self.ok && back?.1 == first, "\(command): the earlier write did not read back")
            let data = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &+ 31 &* round) }
            #expect(f.write(sector: 256 + UInt64(round) * 8, data) == Self.ok, "\(command): \(s.log.suffix(1500))")
            #expect(f.read(sector: 256 + UInt64(round) * 8)?.1 == data)
            #expect(f.overAnswered.isEmpty)
        }
        // The SIGTERM'd daemon drained and exited 0; the killed one died of SIGKILL (status 9).
        #expect(s.events.contains(" status=0\n") && s.events.contains(" status=9\n"), "\(s.events)")
        // Three daemons served on the supervisor's sockets and none made or replaced a file.
        #expect(s.log.components(separatedBy: "vhost-user-blk=\"(socket activation)\"").count == 4, "\(s.log)")
        var after = stat()
        #expect(lstat(s.vhostSocket, &after) == 0 && after.st_ino == before.st_ino)
        f.disconnect()
        finished = true
        #expect(s.finish() == 0)
        #expect(!FileManager.default.fileExists(atPath: s.vhostSocket))
    }
}
