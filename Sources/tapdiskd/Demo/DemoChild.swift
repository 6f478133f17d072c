import Glibc

/// A process the demo started and must not leave behind on any way out of an act (a failed
/// check, an interrupt, a throw): dropped before it was reaped, it is killed and reaped.
///
/// Every act runs a daemon and the VM acts a guest too; each wrote the same `running` flag and
/// `defer` before this type held them.
final class DemoChild {
    let pid: pid_t
    private(set) var exitStatus: Int32?

    init(_ argv: [String], logPath: String) throws(Subprocess.Failure) {
        pid = try Subprocess.spawn(argv, logPath: logPath)
    }

    /// Waits up to `timeoutSeconds` (0: only looks) and keeps the status once it has exited.
    @discardableResult
    func wait(timeoutSeconds: Double) -> Int32? {
        if exitStatus == nil { exitStatus = Subprocess.wait(pid, timeoutSeconds: timeoutSeconds) }
        return exitStatus
    }

    /// SIGTERM, then the exit status within `timeoutSeconds` (-1 if it did not exit).
    func terminate(timeoutSeconds: Double) -> Int32 {
        if exitStatus == nil { kill(pid, SIGTERM) }
        return wait(timeoutSeconds: timeoutSeconds) ?? -1
    }

    deinit {
        guard exitStatus == nil else { return }
        kill(pid, SIGKILL)
        _ = Subprocess.wait(pid, timeoutSeconds: 10)
    }
}
