import CLibAIO
import Glibc

/// A QEMU Machine Protocol connection (`-qmp unix:PATH,server=on,wait=off`), as a management
/// layer uses it: the demo's NBD act and the NBD guest tests watch QEMU stop a guest on
/// `BLOCK_IO_ERROR` and resume it with `cont`, the operator's side of `werror=enospc`.
///
/// One command at a time; events that arrive while a reply is awaited are queued for
/// `nextEvent`, so an event is never mistaken for a reply nor lost. Not on any request path.
package final class QMPClient {
    package enum QMPError: Error, CustomStringConvertible {
        case system(Errno)
        case closed
        case timedOut
        case malformed(String)
        /// QEMU answered `{"error": {"class": …, "desc": …}}`.
        case refused(String)

        package var description: String {
            switch self {
            case .system(let e): "QMP: \(e)"
            case .closed: "QMP: QEMU closed the connection"
            case .timedOut: "QMP: timed out"
            case .malformed(let m): "QMP: malformed message: \(m)"
            case .refused(let m): "QMP: \(m)"
            }
        }
    }

    private let fd: FileDescriptor
    private var pending: [UInt8] = []
    private var events: [JSONObject] = []

    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    package init(socketPath: String, timeoutMilliseconds: Int32 = 10_000) throws(QMPError) {
        let raw = clibaio_stream_connect(socketPath)
        guard raw >= 0 else { throw .system(Errno(rawValue: -raw)) }
        fd = FileDescriptor(adopting: raw)
        guard let greeting = try readMessage(timeoutMilliseconds: timeoutMilliseconds), greeting["QMP"] != nil else {
            throw .malformed("no greeting")
        }
        try execute("qmp_capabilities", timeoutMilliseconds: timeoutMilliseconds)
    }

    /// Runs a command and returns its `return` value; an `error` answer throws `.refused`.
    @discardableResult
    package func execute(
        _ command: String, _ arguments: JSONObject = [:], timeoutMilliseconds: Int32 = 10_000
    ) throws(QMPError) -> JSONValue {
        var object: JSONObject = ["execute": .string(command)]
        if !arguments.isEmpty { object.set("arguments", .object(arguments)) }
        var bytes = JSONWriter.serialize(.object(object))
        bytes.append(UInt8(ascii: "\n"))
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes {
                Glibc.send(fd.rawValue, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw .system(Errno.current)
            }
            sent += n
        }
        let deadline = MonotonicClock.nanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        while true {
            let now = MonotonicClock.nanoseconds()
            guard now < deadline else { throw .timedOut }
            guard let message = try readMessage(timeoutMilliseconds: Int32((deadline - now) / 1_000_000) + 1) else {
                continue
            }
            if message["event"] != nil {
                events.append(message)
                continue
            }
            if let error = message["error"]?.objectValue {
                throw .refused(
                    "\(command): \(error["class"]?.stringValue ?? "?"): \(error["desc"]?.stringValue ?? "")")
            }
            return message["return"] ?? .null
        }
    }

    /// `query-status`: the VM's run state (`running`, `io-error`, `paused`, …) and whether it runs.
    package func status() throws(QMPError) -> (status: String, running: Bool) {
        let value = try execute("query-status").objectValue
        return (value?["status"]?.stringValue ?? "?", value?["running"]?.boolValue ?? false)
    }

    /// The next event, queued or arriving within the timeout (nil when none came).
    package func nextEvent(timeoutMilliseconds: Int32) throws(QMPError) -> JSONObject? {
        if !events.isEmpty { return events.removeFirst() }
        let deadline = MonotonicClock.nanoseconds() + UInt64(max(0, timeoutMilliseconds)) * 1_000_000
        while true {
            let now = MonotonicClock.nanoseconds()
            let left = now < deadline ? Int32((deadline - now) / 1_000_000) : 0
            guard let message = try readMessage(timeoutMilliseconds: left) else {
                if left == 0 { return nil }
                continue
            }
            if message["event"] != nil { return message }
        }
    }

    /// One newline-terminated JSON object, or nil if none is complete within the timeout.
    private func readMessage(timeoutMilliseconds: Int32) throws(QMPError) -> JSONObject? {
        let deadline = MonotonicClock.nanoseconds() + UInt64(max(0, timeoutMilliseconds)) * 1_000_000
        while true {
            if let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[..<newline])
                pending.removeSubrange(...newline)
                if line.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") }) { continue }
                do {
                    guard let object = try JSONParser.parse(line).objectValue else { throw QMPError.malformed("") }
                    return object
                } catch {
                    throw .malformed(String(decoding: line.prefix(200), as: UTF8.self))
                }
            }
            let now = MonotonicClock.nanoseconds()
            let left = now < deadline ? Int32((deadline - now) / 1_000_000) : 0
            var p = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, left)
            if ready < 0 {
                if errno == EINTR { continue }
                throw .system(Errno.current)
            }
            if ready == 0 { return nil }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { Glibc.recv(fd.rawValue, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw .system(Errno.current)
            }
            if n == 0 { throw .closed }
            pending.append(contentsOf: chunk[..<n])
        }
    }
}
