import Glibc
import TapDisk

/// The progress line of `tapdiskd create --preallocate full` (issue 17 §3): bytes written, the
/// rate and the time left, rewritten in place on stderr.
///
/// Only for a person watching: writing zeros to a large image takes minutes, and silence looks
/// like a hang. When stderr is not a terminal (a toolstack, a log, a pipe) nothing is printed,
/// so scripts that read stderr for errors see only errors.
final class PreallocationProgress {
    private let totalBytes: UInt64
    private let startNanos: UInt64
    private var lastPrintNanos: UInt64 = 0
    private var printed = false
    /// Redraws at most this often: a 1 MiB chunk takes about a millisecond in the page cache.
    static let intervalNanos: UInt64 = 200_000_000

    /// nil when stderr is not a terminal.
    init?(totalBytes: UInt64, isTerminal: Bool = isatty(STDERR_FILENO) == 1) {
        guard isTerminal else { return nil }
        self.totalBytes = totalBytes
        startNanos = Self.now()
    }

    /// After each chunk: redraws the line when the interval has passed, and always at the end.
    func update(writtenBytes: UInt64) {
        let now = Self.now()
        let done = writtenBytes >= totalBytes
        guard done || now &- lastPrintNanos >= Self.intervalNanos else { return }
        lastPrintNanos = now
        write(
            Self.line(written: writtenBytes, total: totalBytes, elapsedNanos: now &- startNanos)
                + (done ? ", syncing" : ""))
    }

    /// Ends the line (the caller prints its result or error on the next one).
    func finish() {
        if printed { write("\n", redraw: false) }
    }

    /// `  1.50 GiB / 4.00 GiB (37%), 812.3 MiB/s, 3 s left`.
    static func line(written: UInt64, total: UInt64, elapsedNanos: UInt64) -> String {
        let seconds = Double(elapsedNanos) / 1e9
        let rate = seconds > 0 ? Double(written) / seconds : 0
        let percent = total > 0 ? written * 100 / total : 100
        let left: String
        if written >= total {
            left = "done in \(Self.duration(seconds))"
        } else if rate > 0 {
            left = "\(Self.duration(Double(total - written) / rate)) left"
        } else {
            left = "time left unknown"
        }
        return "preallocating: \(bytes(written)) / \(bytes(total)) (\(percent)%), \(bytes(UInt64(rate)))/s, \(left)"
    }

    static func bytes(_ n: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(n)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(n) B" : "\(fixed(value, 1)) \(units[unit])"
    }

    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded(.up))
        if s < 60 { return "\(s) s" }
        if s < 3600 { return "\(s / 60) min \(s % 60) s" }
        return "\(s / 3600) h \(s % 3600 / 60) min"
    }

    /// `value` with `digits` decimals, without Foundation.
    private static func fixed(_ value: Double, _ digits: Int) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let scaled = Int((value * scale).rounded())
        let whole = scaled / Int(scale)
        var fraction = String(scaled % Int(scale))
        while fraction.count < digits { fraction = "0" + fraction }
        return digits == 0 ? "\(whole)" : "\(whole).\(fraction)"
    }

    /// `\r`, the text, and erase to the end of the line (a shorter line leaves no tail).
    private func write(_ text: String, redraw: Bool = true) {
        printed = true
        let out = redraw ? "\r" + text + "\u{1B}[K" : text
        var bytes = Array(out.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }

    private static func now() -> UInt64 { MonotonicClock.nanoseconds() }
}
