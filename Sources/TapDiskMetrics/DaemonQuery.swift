import TapDisk

/// One synchronous round of `info`, `status` and `stats` on one control socket, all within one
/// deadline. Blocking by design (ControlClient is synchronous); `Scraper` runs it on its own
/// thread so a slow daemon costs only its own deadline.
package enum DaemonQuery {
    package static func run(disk: String, socketPath: String, timeoutMilliseconds: Int32) -> DaemonSample {
        let start = MonotonicClock.nanoseconds()
        let deadline = start + UInt64(max(1, timeoutMilliseconds)) * 1_000_000
        func elapsed() -> Double { Double(MonotonicClock.nanoseconds() - start) / 1e9 }
        func left() throws(ControlClient.ClientError) -> Int32 {
            let now = MonotonicClock.nanoseconds()
            guard now < deadline else { throw .timedOut }
            return Int32(max(1, (deadline - now) / 1_000_000))
        }
        do {
            let client = try ControlClient(socketPath: socketPath)
            let info = try client.call("info", timeoutMilliseconds: try left())
            let status = try client.call("status", timeoutMilliseconds: try left())
            let stats = try client.call("stats", timeoutMilliseconds: try left())
            return DaemonSample(
                disk: disk, socketPath: socketPath, replies: .init(info: info, status: status, stats: stats),
                seconds: elapsed())
        } catch {
            return DaemonSample(
                disk: disk, socketPath: socketPath, replies: nil, failure: error.description, seconds: elapsed())
        }
    }
}
