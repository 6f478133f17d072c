import Glibc

/// The host-wide Linux AIO limit, for a start-up failure that names it. `io_setup` fails with
/// EAGAIN when the context would take the host's `fs.aio-nr` past `fs.aio-max-nr` (65,536 by
/// default): every daemon reserves room for its largest ring (512 events at
/// `--max-ring-page-order 4`), so about the 128th daemon on a host is where a default limit ends.
package struct AIOLimit: Sendable, Equatable {
    /// Events reserved by every AIO context on the host (`/proc/sys/fs/aio-nr`).
    package var inUse: UInt64
    /// The host's limit (`/proc/sys/fs/aio-max-nr`).
    package var maximum: UInt64

    package init(inUse: UInt64, maximum: UInt64) {
        self.inUse = inUse
        self.maximum = maximum
    }

    /// The host's values now, or nil where /proc does not tell.
    package static func current() -> AIOLimit? {
        guard let inUse = readNumber("/proc/sys/fs/aio-nr"), let maximum = readNumber("/proc/sys/fs/aio-max-nr")
        else { return nil }
        return AIOLimit(inUse: inUse, maximum: maximum)
    }

    /// The start-up message for an `io_setup` of `events` that failed with `error`.
    package static func setupFailure(_ error: Errno, events: Int, limit: AIOLimit?) -> String {
        var text = "cannot set up Linux AIO for \(events) requests: \(error)"
        guard error.rawValue == EAGAIN, let limit else { return text }
        text +=
            ": the host's AIO limit is used up (fs.aio-nr \(limit.inUse) of fs.aio-max-nr \(limit.maximum));"
            + " raise it (sysctl -w fs.aio-max-nr=\(max(limit.maximum * 2, limit.inUse + UInt64(events) * 2)))"
            + " or lower --max-ring-page-order"
        return text
    }

    private static func readNumber(_ path: String) -> UInt64? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        let digits = buffer[0..<n].prefix { $0 >= 0x30 && $0 <= 0x39 }
        return UInt64(String(decoding: digits, as: UTF8.self))
    }
}
