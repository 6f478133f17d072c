import Foundation
import Glibc
import Testing

@testable import TapDisk

/// Usage errors say what was typed wrong, exit 64 (runtime failures exit 1), and stay on one
/// line.
@Suite struct CommandLineMessageTests {
    @Test func negativeNumbersAreInvalidValuesNotMissingOnes() throws {
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let serve = ["--image", image, "--socket", dir + "/disk.sock"]
        let cases: [([String], String)] = [
            (serve + ["--max-ring-page-order", "-1"], "--max-ring-page-order"),
            (serve + ["--pause-timeout", "-1"], "--pause-timeout"),
            (serve + ["--low-space-threshold", "-1"], "--low-space-threshold"),
            (serve + ["--low-space-threshold", "-5%"], "--low-space-threshold"),
            (serve + ["--max-control-connections", "-2"], "--max-control-connections"),
            // PROTOCOL.md §1: a cap of at least 16.
            (serve + ["--max-control-connections", "15"], "--max-control-connections"),
            (["create", dir + "/new.img", "--size", "-1"], "--size"),
        ]
        for (args, option) in cases {
            let run = try Tapdiskd.run(args)
            #expect(run.status == 64, "\(args): exit \(run.status)")
            #expect(run.stderrLines.count == 1, "\(args): \(run.stderr)")
            #expect(!run.stderr.contains("Missing value"), "\(args): \(run.stderr)")
            #expect(run.stderr.contains(option) && run.stderr.contains("-"), "\(args): \(run.stderr)")
            #expect(run.stderr.lowercased().contains("invalid") || run.stderr.contains("negative"), "\(run.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/disk.sock"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/new.img"))
    }

    @Test func createSizeErrorsAreUsageErrorsAndCreationFailuresAreNot() throws {
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for size in ["0", "-1", "lots", "1000"] {
            let run = try Tapdiskd.run(["create", dir + "/new.img", "--size", size])
            #expect(run.status == 64, "--size \(size): exit \(run.status) \(run.stderr)")
            #expect(run.stderrLines.count == 1 && run.stderr.contains("--size"))
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/new.img"))
        let made = try Tapdiskd.run(["create", dir + "/new.img", "--size", "1M"])
        #expect(made.status == 0)
        let exists = try Tapdiskd.run(["create", dir + "/new.img", "--size", "1M"])
        #expect(exists.status == 1 && exists.stderr.contains("already exists"), "a runtime failure is 1")
    }

    @Test func unknownSubcommandIsNamed() throws {
        let run = try Tapdiskd.run(["frobnicate"])
        #expect(run.status == 64)
        #expect(run.stderrLines.count == 1)
        #expect(run.stderr.contains("unknown subcommand 'frobnicate'"), "\(run.stderr)")
        #expect(!run.stderr.contains("--image"))
        // Known subcommands and the default one still parse.
        #expect(try Tapdiskd.run(["ctl", "--help"]).status == 0)
        #expect(try Tapdiskd.run(["--help"]).status == 0)
    }

    @Test func aNewlineInAPathStaysOnOneLine() throws {
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try Tapdiskd.run(["--image", dir + "/a\nb.img", "--socket", dir + "/disk.sock"])
        #expect(run.status == 1)
        #expect(run.stderrLines.count == 1, "\(run.stderr.debugDescription)")
        #expect(run.stderr.contains("a\\nb.img"))
    }

    @Test func escaping() {
        #expect("a\nb\tc\\d\u{1}".escapedForOneLine == "a\\nb\\tc\\\\d\\x01")
        #expect("plain /path".escapedForOneLine == "plain /path")
    }
}
