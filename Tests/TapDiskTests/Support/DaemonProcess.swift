import Foundation
import Glibc

@testable import TapDisk

/// The real `tapdiskd` binary, spawned for a test: the daemon tests talk to it only through its
/// socket and its exit status, like a toolstack would.
final class DaemonProcess: @unchecked Sendable {
    let process = Process()
    let socketPath: String
    let logPath: String
    let directory: String
    let imagePath: String
    /// A temporary image this fixture created and removes when it goes away.
    private var ownedImage: String? = nil
    /// Whether `deinit` leaves the directory alone: a test that restarts daemons on one socket
    /// path (the recovery test's supervisor) owns the directory itself.
    private let keepsDirectory: Bool

    /// The binary next to the test bundle (`swift build` puts both in the same folder).
    static var binary: String {
        let exe =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        while dir.path != "/" && !dir.lastPathComponent.hasSuffix(".xctest")
            && !FileManager.default.fileExists(atPath: dir.appendingPathComponent("tapdiskd").path)
        {
            dir = dir.deletingLastPathComponent()
        }
        if dir.lastPathComponent.hasSuffix(".xctest") { dir = dir.deletingLastPathComponent() }
        return dir.appendingPathComponent("tapdiskd").path
    }

    /// Makes a private directory for the socket and the log.
    static func makeDirectory() -> String {
        var template = Array("/tmp/tapdiskd-test-XXXXXX".utf8CString)
        return String(cString: mkdtemp(&template)!)
    }

    /// Starts `tapdiskd --image IMAGE --socket DIR/disk.sock ARGS` and waits until it answers.
    /// `launcher` runs in front of the binary and must exec it (e.g. `["prlimit", "--nofile=40"]`),
    /// so the process id stays the daemon's. With `waitsUntilReady` false it returns once the
    /// process is spawned, as a supervisor restarting a daemon does (a frontend keeps retrying).
    init(
        image: String, arguments: [String] = [], directory: String? = nil, environment: [String: String]? = nil,
        launcher: [String] = [], waitsUntilReady: Bool = true, keepsDirectory: Bool = false
    ) throws {
        self.keepsDirectory = keepsDirectory
        self.directory = directory ?? Self.makeDirectory()
        imagePath = image
        socketPath = self.directory + "/disk.sock"
        logPath = self.directory + "/daemon.log"
        FileManager.default.createFile(atPath: logPath, contents: nil)
        let daemonArguments = ["--image", image, "--socket", socketPath, "--log-level", "debug"] + arguments
        if let first = launcher.first {
            process.executableURL = URL(fileURLWithPath: Shell.which(first) ?? first)
            process.arguments = Array(launcher.dropFirst()) + [Self.binary] + daemonArguments
        } else {
            process.executableURL = URL(fileURLWithPath: Self.binary)
            process.arguments = daemonArguments
        }
        process.standardError = FileHandle(forWritingAtPath: logPath)
        process.standardOutput = FileHandle(forWritingAtPath: logPath)
        if let environment { process.environment = environment }
        try process.run()
        guard waitsUntilReady else { return }
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            if !process.isRunning { throw Failure("tapdiskd exited at startup (\(process.terminationStatus)): \(log)") }
            if Self.probe(socketPath) {
                // The probe has closed; once the daemon has seen that, a test's first look at the
                // fd table or the connection count finds no connection but its own.
                let pid = process.processIdentifier
                if DaemonTest.waitUntil(
                    seconds: 10, { DaemonTest.connectedSockets(pid: pid, path: socketPath).isEmpty })
                {
                    return
                }
                throw Failure("tapdiskd kept the start-up probe's connection: \(log)")
            }
            usleep(20_000)  // paces the retries while the daemon starts
        }
        throw Failure("tapdiskd did not start: \(log)")
    }

    /// One `info` on a connection that is closed on return: whether the daemon answers yet.
    private static func probe(_ socketPath: String) -> Bool {
        guard let c = try? ControlClient(socketPath: socketPath) else { return false }
        return (try? c.call("info")) != nil
    }

    /// A daemon serving a fresh sparse temporary image of `imageBytes`; the daemon is killed and
    /// the image removed when the fixture goes away, so tests need no clean-up of their own.
    convenience init(imageBytes: Int, arguments: [String] = [], directory: String? = nil) throws {
        let image = try EngineHarness.makeTemporaryImage(bytes: imageBytes)
        do {
            try self.init(image: image, arguments: arguments, directory: directory)
        } catch {
            unlink(image)
            throw error
        }
        ownedImage = image
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func client() throws -> ControlClient { try ControlClient(socketPath: socketPath) }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// Waits for exit; returns the status (nil on timeout).
    @discardableResult
    func waitForExit(timeoutSeconds: Double = 30) -> Int32? {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while process.isRunning && Date() < deadline { usleep(10_000) }  // polls for the exit
        return process.isRunning ? nil : process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        if !keepsDirectory { try? FileManager.default.removeItem(atPath: directory) }
        if let ownedImage { unlink(ownedImage) }
    }
}
