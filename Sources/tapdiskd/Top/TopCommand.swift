import ArgumentParser
import Dispatch
import Glibc
import Synchronization
import TapDisk
import TapDiskMetrics

/// `tapdiskd top`: every disk on the host, one row each, refreshed every interval and sorted by
/// load. Discovery and querying are the exporter's (`SocketSet`, `Scraper`), so `top` and
/// Prometheus see the same disks with the same deadline behaviour.
struct TopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "Show every disk on the host, one row each, refreshed every interval and sorted by IOPS.",
        discussion: """
            Columns: read and write IOPS and MB/s and the p99 latency (the bound of its histogram \
            bucket, all operations) over the last interval; in-flight and held requests, state, \
            io-status and front now. LIMIT is the QoS limits in force (none without), followed by * while \
            a limit holds a request back. A daemon that does not \
            answer within half the interval (at least 100 ms) is a row with state down.
            """
    )

    @Option(
        name: .customLong("sockets"),
        help:
            "Control sockets: a directory (its *.sock) or a glob; repeatable (default: /run/tapdisk/ and /run/tapdiskd/)."
    )
    var sockets: [String] = []

    @Option(help: "Seconds between samples; rates and p99 are over this interval.")
    var interval: Double = 1

    @Flag(help: "Print one screen (two samples --interval apart) and exit.")
    var once = false

    @Flag(help: "Print one JSON object per sample instead of a table.")
    var json = false

    func validate() throws {
        guard interval >= 0.1, interval <= 3600 else { throw ValidationError("--interval must be 0.1...3600 seconds") }
    }

    func run() throws {
        let patterns = sockets.isEmpty ? ["/run/tapdisk/", "/run/tapdiskd/"] : sockets
        let scraper = Scraper(
            sockets: SocketSet(patterns: patterns), timeoutMilliseconds: Int32(max(100, interval * 500)))
        let clearsScreen = !json && isatty(1) == 1
        var previous = Self.scrape(scraper)
        var previousAt = MonotonicClock.nanoseconds()
        while true {
            Self.sleep(until: previousAt + UInt64(interval * 1e9))
            let now = MonotonicClock.nanoseconds()
            let current = Self.scrape(scraper)
            let seconds = Double(now - previousAt) / 1e9
            let rows = TopRow.rows(previous: previous, current: current, seconds: seconds)
            var text =
                json ? TopRenderer.json(rows, intervalSeconds: seconds) : TopRenderer.table(rows)
            if clearsScreen { text = "\u{1B}[H\u{1B}[2J" + text } else if !json && !once { text += "\n" }
            Self.write(text)
            if once { return }
            previous = current
            previousAt = now
        }
    }

    /// `Scraper` is async; the command is not, so the main thread waits for one scrape.
    static func scrape(_ scraper: Scraper) -> [DaemonSample] {
        let result = Mutex<[DaemonSample]>([])
        let done = DispatchSemaphore(value: 0)
        Task {
            let samples = await scraper.scrape()
            result.withLock { $0 = samples }
            done.signal()
        }
        done.wait()
        return result.withLock { $0 }
    }

    static func sleep(until deadline: UInt64) {
        let now = MonotonicClock.nanoseconds()
        guard deadline > now else { return }
        var request = timespec(
            tv_sec: Int(deadline - now) / 1_000_000_000, tv_nsec: Int(deadline - now) % 1_000_000_000)
        var remaining = timespec()
        while nanosleep(&request, &remaining) == -1 && errno == EINTR { request = remaining }
    }

    /// All of `text` to stdout with write(2), so a pipe reader gets each screen whole and at once.
    static func write(_ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { Glibc.write(1, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { Glibc.exit(n < 0 && errno == EPIPE ? 0 : 1) }
            bytes = bytes.dropFirst(n)
        }
    }
}
