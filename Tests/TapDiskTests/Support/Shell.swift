import Foundation

/// Runs external tools (mkfs.ext4, mount, losetup, systemd-analyze) from tests.
///
/// Both pipes are drained concurrently so a chatty tool can never deadlock the test on a full
/// pipe, and executables are looked up in the sbin directories too, because test runners often
/// start with a PATH that lacks /usr/sbin even as root.
enum Shell {
    struct Result: Sendable {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    struct Failure: Error, CustomStringConvertible {
        var argv: [String]
        var result: Result?
        var reason: String
        var description: String {
            var text = "\(argv.joined(separator: " ")): \(reason)"
            if let result, !result.stderr.isEmpty { text += "\n" + result.stderr }
            return text
        }
    }

    /// The absolute path of `name` found in PATH or the usual system directories, or nil.
    static func which(_ name: String) -> String? {
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let dirs =
            path.split(separator: ":").map(String.init) + [
                "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin",
            ]
        for dir in dirs where !dir.isEmpty {
            let candidate = dir + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Runs `argv` and waits. Throws only when it cannot be started; the exit status is returned
    /// (a signal death is reported as 128 + signal, like a shell). A run that outlives
    /// `timeoutSeconds` is killed (status 137).
    @discardableResult
    static func run(_ argv: [String], environment: [String: String]? = nil, timeoutSeconds: Double? = nil) throws -> (
        status: Int32, stdout: String, stderr: String
    ) {
        guard let first = argv.first else { throw Failure(argv: argv, result: nil, reason: "empty command") }
        guard let exe = first.hasPrefix("/") ? first : which(first) else {
            throw Failure(argv: argv, result: nil, reason: "command not found")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: exe)
        process.arguments = Array(argv.dropFirst())
        if let environment { process.environment = environment }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let errBox = DataBox()
        let reader = Thread {
            errBox.data = err.fileHandleForReading.readDataToEndOfFile()
            errBox.done.signal()
        }
        reader.start()
        let killer = DispatchWorkItem { if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) } }
        if let timeoutSeconds { DispatchQueue.global().asyncAfter(deadline: .now() + timeoutSeconds, execute: killer) }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        errBox.done.wait()
        process.waitUntilExit()
        killer.cancel()
        let status =
            process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
        return (status, String(decoding: outData, as: UTF8.self), String(decoding: errBox.data, as: UTF8.self))
    }

    /// Like `run`, but a non-zero exit status is an error carrying stderr.
    @discardableResult
    static func check(_ argv: [String]) throws -> String {
        let r = try run(argv)
        guard r.status == 0 else {
            throw Failure(
                argv: argv, result: Result(status: r.status, stdout: r.stdout, stderr: r.stderr),
                reason: "exit status \(r.status)")
        }
        return r.stdout
    }

    private final class DataBox: @unchecked Sendable {
        var data = Data()
        let done = DispatchSemaphore(value: 0)
    }
}
