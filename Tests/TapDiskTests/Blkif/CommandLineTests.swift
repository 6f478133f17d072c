import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The `tapdiskd` command line: startup failures (one line on stderr, non-zero, no socket) and
/// `tapdiskd ctl` against a live daemon, human and `--json` output.
@Suite struct CommandLineTests {
    /// Each bad start: exit non-zero, exactly one line on stderr, no socket file created.
    @Test func startupFailuresExitNonZeroWithOneLineAndNoSocket() throws {
        let image = try DaemonTest.image()
        defer { unlink(image) }
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sock = dir + "/disk.sock"
        let cases: [[String]] = [
            ["--image", dir + "/missing.img", "--socket", sock],
            ["--image", dir, "--socket", sock],
            ["--image", image, "--socket", sock, "--cache", "bogus"],
            ["--image", image, "--socket", sock, "--on-nospace", "ignore"],
            ["--image", image, "--socket", sock, "--on-error", "retry"],
            ["--image", image, "--socket", sock, "--max-ring-page-order", "9"],
            ["--image", image, "--socket", sock, "--max-ring-page-order", "x"],
            ["--image", image, "--socket", sock, "--pause-timeout", "-1"],
            ["--image", image, "--socket", sock, "--low-space-threshold", "lots"],
            ["--image", image, "--socket", sock, "--log-level", "chatty"],
            ["--image", image, "--socket", sock, "--frobnicate"],
            ["--image", image, "--socket", dir + "/no/such/dir/disk.sock"],
            ["--socket", sock],
            ["--image", image],
            ["serve", "--image", image, "--socket", sock, "extra-argument"],
        ]
        for args in cases {
            let run = try Tapdiskd.run(args)
            #expect(run.status != 0 && run.status < 128, "\(args): exit \(run.status)")
            #expect(run.stderrLines.count == 1, "\(args): stderr \(run.stderr.debugDescription)")
            #expect(run.stderr.hasPrefix("tapdiskd: "), "\(args)")
            #expect(!FileManager.default.fileExists(atPath: sock), "\(args) created the socket")
        }
        // The missing image is named in the message.
        let missing = try Tapdiskd.run(["--image", dir + "/missing.img", "--socket", sock])
        #expect(missing.stderr.contains("missing.img"))
    }

    /// A path that exists and is not a socket is not replaced.
    @Test func existingNonSocketPathIsNotReplaced() throws {
        let image = try DaemonTest.image()
        defer { unlink(image) }
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/disk.sock"
        #expect(FileManager.default.createFile(atPath: path, contents: Data("precious".utf8)))
        let run = try Tapdiskd.run(["--image", image, "--socket", path])
        #expect(run.status != 0 && run.stderrLines.count == 1)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "precious")
    }

    @Test func ctlStatusStatsPauseResumeDetachHumanAndJSON() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let image = daemon.imagePath
        let sock = daemon.socketPath
        func ctl(_ args: String...) throws -> Tapdiskd.Run { try Tapdiskd.run(["ctl", "--socket", sock] + args) }

        // info, human: "key: value" lines, nested keys dotted, no ok/tag.
        let info = try ctl("info")
        #expect(info.status == 0 && info.stderr.isEmpty)
        let lines = Set(info.stdout.split(separator: "\n").map(String.init))
        #expect(lines.contains("image: \(image)"))
        #expect(lines.contains("state: idle"))
        #expect(lines.contains("sectors: \((16 << 20) / 512)"))
        #expect(lines.contains("features.flush: true"))
        #expect(!lines.contains { $0.hasPrefix("ok:") || $0.hasPrefix("tag:") })

        // Nothing attached: pause fails with the code on stderr, exit 1; --json prints the reply.
        let refused = try ctl("pause")
        #expect(refused.status == 1 && refused.stdout.isEmpty)
        #expect(refused.stderrLines.count == 1 && refused.stderr.contains("not-attached"))
        let refusedJSON = try ctl("pause", "--json")
        #expect(refusedJSON.status == 1)
        let refusedObject = try JSONParser.parse(refusedJSON.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(refusedObject["ok"] == .bool(false) && refusedObject["error"]?["code"] == .string("not-attached"))

        let driver = try DiskDriver(socketPath: sock)
        #expect(driver.roundTrip(sector: 0, seed: 1))

        let status = try ctl("status")
        #expect(status.status == 0)
        let statusLines = Set(status.stdout.split(separator: "\n").map(String.init))
        #expect(statusLines.contains("state: running") && statusLines.contains("attached: true"))
        #expect(statusLines.contains("reason: -") && statusLines.contains("io-status: ok"))
        #expect(statusLines.contains { $0.hasPrefix("image-space.fs-free-bytes: ") })

        let statusJSON = try ctl("status", "--json")
        #expect(statusJSON.status == 0 && statusJSON.stdout.split(separator: "\n").count == 1)
        let so = try JSONParser.parse(statusJSON.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(so["ok"] == .bool(true) && so["state"] == .string("running") && so["reason"] == .null)
        #expect(so["in-flight"]?.numberValue?.isInteger == true)

        let stats = try ctl("stats")
        let statLines = Set(stats.stdout.split(separator: "\n").map(String.init))
        #expect(statLines.contains("counters.write-requests: 1") && statLines.contains("counters.read-requests: 1"))
        #expect(statLines.contains("counters.responses-okay: 2") && statLines.contains("counters.in-flight: 0"))
        let statsJSON = try JSONParser.parse(
            try ctl("stats", "--json").stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        for name in DaemonTest.counterNames {
            #expect(statsJSON["counters"]?[name]?.numberValue?.isInteger == true, "\(name)")
        }

        let pause = try ctl("pause")
        #expect(pause.status == 0 && pause.stdout == "ok\n")
        #expect(try daemon.client().call("status")["reason"] == .string("operator"))
        let pauseAgain = try ctl("pause", "--json")
        #expect(pauseAgain.status == 0)
        #expect(
            try JSONParser.parse(pauseAgain.stdout.trimmingCharacters(in: .whitespacesAndNewlines))["ok"] == .bool(true)
        )

        let resume = try ctl("resume")
        #expect(resume.status == 0)
        #expect(Set(resume.stdout.split(separator: "\n").map(String.init)) == ["resubmitted: 0", "failed: 0"])
        let resumeAgain = try ctl("resume", "--fail-held")
        #expect(resumeAgain.status == 1 && resumeAgain.stderr.contains("wrong-state"))
        #expect(driver.roundTrip(sector: 8, seed: 2))

        let detach = try ctl("detach", "--json")
        #expect(detach.status == 0)
        let d = try JSONParser.parse(detach.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(d["ok"] == .bool(true) && d["req-cons"]?.uint64Value == 4 && d["completed"]?.uint64Value == 0)
        #expect(try daemon.client().call("status")["attached"] == .bool(false))
        try DaemonTest.expectInvariant(try daemon.client())

        // A socket nobody serves: exit 1, one line.
        let gone = try Tapdiskd.run(["ctl", "--socket", daemon.directory + "/nobody.sock", "status"])
        #expect(gone.status == 1 && gone.stderrLines.count == 1)
    }

    @Test func ctlEventsPrintsEventsAsTheyHappen() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: DaemonProcess.binary)
        process.arguments = ["ctl", "--socket", daemon.socketPath, "events", "--json"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        // DaemonProcess returns once the daemon has processed its start-up probe's close.
        let baseline = DaemonTest.fdCount(pid: daemon.pid)
        try process.run()
        defer {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        // Wait until `ctl` has connected (one more fd in the daemon) and has its `subscribe`
        // answered: it then waits for events, in a poll with its 60 s event timeout rather than the
        // 30 s reply timeout.
        #expect(DaemonTest.waitUntil(seconds: 10) { DaemonTest.fdCount(pid: daemon.pid) > baseline })
        let subscribed = DaemonTest.waitUntil(seconds: 10) {
            DaemonTest.pollTimeouts(pid: process.processIdentifier).contains { $0 > 30_000 }
        }
        #expect(subscribed, "ctl events is not waiting for events")
        let toolstack = try daemon.client()
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        try toolstack.call("pause")
        try toolstack.call("resume")
        _ = try driver.disk.detach()
        // Read lines as they come (each event is flushed at once; the test runner's threads
        // block SIGTERM, which spawned children inherit, so `ctl` is stopped with SIGKILL).
        let fd = out.fileHandleForReading.fileDescriptor
        var bytes: [UInt8] = []
        #expect(
            DaemonTest.waitUntil(seconds: 10) {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, 0) > 0 {
                    var chunk = [UInt8](repeating: 0, count: 4096)
                    let n = read(fd, &chunk, 4096)
                    if n > 0 { bytes += chunk[0..<n] }
                }
                return bytes.filter { $0 == 10 }.count >= 5
            })
        let text = String(decoding: bytes, as: UTF8.self)
        let states = try text.split(separator: "\n").map { try JSONParser.parse(String($0)) }.map {
            $0["state"]?.stringValue ?? "?"
        }
        #expect(states == ["running", "paused", "running", "closing", "idle"], "\(text)")
    }

    @Test func createMakesASparseImageAndNeverOverwrites() throws {
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/new.img"
        let made = try Tapdiskd.run(["create", path, "--size", "3M"])
        #expect(made.status == 0)
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_size == 3 << 20 && st.st_blocks == 0)
        let again = try Tapdiskd.run(["create", path, "--size", "1M"])
        #expect(again.status != 0 && again.stderrLines.count == 1)
        #expect(stat(path, &st) == 0 && st.st_size == 3 << 20)
        let bad = try Tapdiskd.run(["create", dir + "/x.img", "--size", "lots"])
        #expect(bad.status != 0 && bad.stderrLines.count == 1)
        // The new image serves.
        let daemon = try DaemonProcess(image: path)
        defer { daemon.forceStop() }
        #expect(try daemon.client().call("info")["sectors"]?.uint64Value == UInt64((3 << 20) / 512))
    }
}
