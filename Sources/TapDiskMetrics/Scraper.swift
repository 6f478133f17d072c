import Glibc
import Synchronization
import TapDisk

/// Queries every daemon of a `SocketSet` at once, each with its own deadline.
///
/// Each query runs on a thread of its own (ControlClient blocks), and the scrape waits for each
/// answer or its deadline, whichever comes first: a dead daemon fails at once, a wedged one
/// costs the deadline, and neither delays the others. A query still stuck past its deadline
/// (a `connect` blocked on a wedged daemon's full backlog) keeps its thread; while it does, that
/// disk is reported down without starting another, so a wedged disk holds at most one thread.
package final class Scraper: Sendable {
    package let sockets: SocketSet
    package let timeoutMilliseconds: Int32
    private let outstanding = Mutex<Set<String>>([])

    package init(sockets: SocketSet, timeoutMilliseconds: Int32) {
        self.sockets = sockets
        self.timeoutMilliseconds = timeoutMilliseconds
    }

    /// One sample per socket found now, in the order of `SocketSet.expand`.
    package func scrape() async -> [DaemonSample] {
        let targets = sockets.expand()
        return await withTaskGroup(of: (Int, DaemonSample).self) { group in
            for (index, target) in targets.enumerated() {
                group.addTask { (index, await self.query(disk: target.disk, path: target.path)) }
            }
            var samples = [DaemonSample?](repeating: nil, count: targets.count)
            for await (index, sample) in group { samples[index] = sample }
            return samples.compactMap { $0 }
        }
    }

    /// The scrape rendered in `format`.
    package func render(_ format: ExpositionFormat) async -> String {
        format.render(DaemonMetrics.families(await scrape()))
    }

    private func query(disk: String, path: String) async -> DaemonSample {
        let timeout = timeoutMilliseconds
        let down = DaemonSample(
            disk: disk, socketPath: path, replies: nil, failure: "no answer within \(timeout) ms",
            seconds: Double(timeout) / 1000)
        guard outstanding.withLock({ $0.insert(path).inserted }) else {
            return DaemonSample(
                disk: disk, socketPath: path, replies: nil, failure: "an earlier query is still stuck", seconds: 0)
        }
        return await withCheckedContinuation { (continuation: CheckedContinuation<DaemonSample, Never>) in
            let once = ResumeOnce(continuation)
            let started = DetachedThread.start { [self] in
                let sample = DaemonQuery.run(disk: disk, socketPath: path, timeoutMilliseconds: timeout)
                self.outstanding.withLock { _ = $0.remove(path) }
                once.resume(sample)
            }
            guard started else {
                self.outstanding.withLock { _ = $0.remove(path) }
                once.resume(
                    DaemonSample(disk: disk, socketPath: path, replies: nil, failure: "no thread", seconds: 0))
                return
            }
            // ControlClient honours the deadline itself; this is the backstop for a blocked connect.
            Task {
                try? await Task.sleep(for: .milliseconds(Int(timeout) + 50))
                once.resume(down)
            }
        }
    }
}

/// Resumes a continuation with whichever result comes first, and ignores the rest.
private final class ResumeOnce: Sendable {
    private let continuation: Mutex<CheckedContinuation<DaemonSample, Never>?>

    init(_ continuation: CheckedContinuation<DaemonSample, Never>) {
        self.continuation = Mutex(continuation)
    }

    func resume(_ sample: DaemonSample) {
        continuation.withLock { c in
            c?.resume(returning: sample)
            c = nil
        }
    }
}
