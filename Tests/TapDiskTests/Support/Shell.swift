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
        // Both pipes are drained until the tool has exited and its pipe is empty, not until end of
        // file: another test's child spawned while these pipes were open (QEMU, a daemon, a
        // script) inherits their write ends and would hold off end of file for as long as it
        // lives. In a whole-suite run, qemu-io and nbdinfo calls that take 0.2 s waited 211 s
        // that way, until a guest test's children exited.
        let exited = ExitFlag()
        let outBox = DataBox()
        let errBox = DataBox()
        for (pipe, box) in [(out, outBox), (err, errBox)] {
            let fd = pipe.fileHandleForReading.fileDescriptor
            Thread {
                box.data = drain(fd, until: exited)
                box.done.signal()
            }.start()
        }
        let killer = DispatchWorkItem { if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) } }
        if let timeoutSeconds { DispatchQueue.global().asyncAfter(deadline: .now() + timeoutSeconds, execute: killer) }
        process.waitUntilExit()
        exited.set()
        outBox.done.wait()
        errBox.done.wait()
        killer.cancel()
        let status =
            process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
        return (status, String(decoding: outBox.data, as: UTF8.self), String(decoding: errBox.data, as: UTF8.self))
    }

    /// Reads `fd` until end of file, or until `exited` is set and 50 ms pass without data.
    private static func drain(_ fd: Int32, until exited: ExitFlag) -> Data {
        var data = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, 50)
            if ready > 0 {
                let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    data.append(contentsOf: chunk[0..<n])
                    continue
                }
                if n < 0 && errno == EINTR { continue }
                return data  // end of file, or an error
            }
            if ready < 0 && errno == EINTR { continue }
            if exited.isSet { return data }
        }
    }

    private final class ExitFlag: @unchecked Sendable {
        private let lock = NSLock()
        private var value = false
        var isSet: Bool { lock.withLock { value } }
        func set() { lock.withLock { value = true } }
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
