import Foundation

/// `tapdiskd bench ... --json` on a thread of its own, for a test that watches something else
/// (Prometheus, `tapdiskd top`) while the bench loads a daemon.
final class BackgroundBench: @unchecked Sendable {
    typealias Run = (status: Int32, stdout: String, stderr: String)
    private let done = DispatchSemaphore(value: 0)
    private var run: Run? = nil

    /// Starts `tapdiskd bench --socket SOCKET ARGUMENTS --json`.
    init(socket: String, arguments: [String]) {
        let argv = [DaemonProcess.binary, "bench", "--socket", socket] + arguments + ["--json"]
        Thread { [self] in
            run = try? Shell.run(argv, timeoutSeconds: 60)
            done.signal()
        }.start()
    }

    /// Waits for the bench to exit; its run, or nil if it could not be run.
    func wait() -> Run? {
        done.wait()
        return run
    }
}
