import Glibc

/// Just enough process spawning for the demo's set-up (mkfs, losetup, mount) and for starting the
/// daemon as a child, without pulling Foundation into the daemon binary.
enum Subprocess {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Starts `argv` with stdout and stderr appended to `logPath` (or /dev/null).
    static func spawn(_ argv: [String], logPath: String? = nil) throws(Failure) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        let target = logPath ?? "/dev/null"
        posix_spawn_file_actions_addopen(&actions, 1, target, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, argv[0], &actions, nil, &cArgs, environ)
        guard rc == 0 else { throw Failure(description: "cannot run \(argv[0]): \(String(cString: strerror(rc)))") }
        return pid
    }

    /// Waits for a child; returns its exit status (128+signal when killed), or nil on timeout.
    static func wait(_ pid: pid_t, timeoutSeconds: Double = .infinity) -> Int32? {
        let deadline = Double(clockSeconds()) + timeoutSeconds
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, timeoutSeconds.isInfinite ? 0 : WNOHANG)
            if r == pid {
                if status & 0x7f == 0 { return (status >> 8) & 0xff }
                return 128 + (status & 0x7f)
            }
            if r < 0 && errno != EINTR { return -1 }
            if Double(clockSeconds()) > deadline { return nil }
            usleep(10_000)
        }
    }

    /// Runs a command to completion; throws with its output when it fails.
    @discardableResult
    static func run(_ argv: [String], allowFailure: Bool = false) throws(Failure) -> Int32 {
        let log = "/tmp/tapdiskd-demo-cmd-\(getpid()).log"
        unlink(log)
        defer { unlink(log) }
        let pid = try spawn(argv, logPath: log)
        let status = wait(pid) ?? -1
        if status != 0 && !allowFailure {
            throw Failure(description: "\(argv.joined(separator: " ")) failed (\(status)): \(readFile(log).trimmed)")
        }
        return status
    }

    /// Runs a command and returns its output (for `losetup --show`).
    static func output(_ argv: [String]) throws(Failure) -> String {
        let log = "/tmp/tapdiskd-demo-out-\(getpid()).log"
        unlink(log)
        defer { unlink(log) }
        let pid = try spawn(argv, logPath: log)
        let status = wait(pid) ?? -1
        let text = readFile(log)
        if status != 0 { throw Failure(description: "\(argv.joined(separator: " ")) failed: \(text.trimmed)") }
        return text.trimmed
    }

    static func readFile(_ path: String) -> String {
        guard let f = fopen(path, "r") else { return "" }
        defer { fclose(f) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func which(_ name: String) -> Bool {
        let path = String(cString: getenv("PATH") ?? strdup("/usr/sbin:/usr/bin:/sbin:/bin"))
        return path.split(separator: ":").contains { access("\($0)/\(name)", X_OK) == 0 }
    }

    private static func clockSeconds() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return ts.tv_sec
    }
}

extension String {
    var trimmed: String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s = s.dropFirst() }
        while let c = s.last, c.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
