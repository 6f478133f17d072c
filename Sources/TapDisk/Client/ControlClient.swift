import CLibAIO
import Glibc

/// A control connection to a daemon, as a toolstack or frontend uses it.
///
/// Synchronous by design (one request, one reply): events that arrive in between, after
/// `subscribe`, are queued for `nextEvent` rather than mistaken for replies.
package final class ControlClient {
    package enum ClientError: Error, CustomStringConvertible {
        case system(Errno)
        /// The daemon closed the connection.
        case closed
        /// The daemon answered `ok: false`.
        case refused(code: String, message: String)
        /// Something that is not a well-formed reply arrived.
        case malformed(String)
        case timedOut

        package var description: String {
            switch self {
            case .system(let e): "\(e)"
            case .closed: "the daemon closed the connection"
            case .refused(let code, let message): "\(code): \(message)"
            case .malformed(let m): "malformed reply: \(m)"
            case .timedOut: "timed out waiting for the daemon"
            }
        }

        package var code: String? {
            if case .refused(let code, _) = self { return code }
            return nil
        }
    }

    package let fd: FileDescriptor
    private var events: [JSONObject] = []
    private var nextTag: Int64 = 1
    /// Allocated only once the connection exists: an init that throws before every property is
    /// set never runs `deinit`, so allocating first leaked 64 KiB per refused connect
    /// (LeakSanitizer, scripts/test.sh --sanitize address; tests retry connects while a daemon
    /// starts).
    private let buffer: UnsafeMutableRawBufferPointer

    package init(socketPath: String) throws(ClientError) {
        let fd = clibaio_unix_connect(socketPath)
        guard fd >= 0 else { throw .system(Errno(rawValue: -fd)) }
        self.fd = FileDescriptor(adopting: fd)
        buffer = .allocate(byteCount: ControlRequest.maxDatagramSize + 1, alignment: 8)
    }

    deinit { buffer.deallocate() }

    /// Sends raw bytes (tests use this for malformed input) with optional fds.
    package func sendRaw(_ bytes: [UInt8], fds: [Int32] = []) throws(ClientError) {
        let n = bytes.withUnsafeBytes { raw in
            fds.withUnsafeBufferPointer {
                clibaio_send_datagram(fd.rawValue, raw.baseAddress, raw.count, $0.baseAddress, Int32(fds.count), 0)
            }
        }
        if n < 0 { throw .system(Errno(rawValue: Int32(-n))) }
    }

    /// Receives the next datagram of any kind, parsed (nil on timeout).
    package func receive(timeoutMilliseconds: Int32) throws(ClientError) -> JSONObject? {
        var p = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
        let ready = poll(&p, 1, timeoutMilliseconds)
        if ready == 0 { return nil }
        if ready < 0 { throw .system(Errno.current) }
        var fds = [Int32](repeating: -1, count: 4)
        var nfds: Int32 = 0
        var flags: Int32 = 0
        var n = clibaio_recv_datagram(fd.rawValue, buffer.baseAddress, buffer.count, &fds, 4, &nfds, &flags)
        if n == -Int(ECONNRESET) {
            // The daemon refused this connection and closed it while our request was unread: the
            // kernel reports the reset before the refusal that is still queued here. Reading the
            // error cleared it; the refusal comes next.
            n = clibaio_recv_datagram(fd.rawValue, buffer.baseAddress, buffer.count, &fds, 4, &nfds, &flags)
            if n < 0 || n == 0 { n = -Int(ECONNRESET) }
        }
        for i in 0..<Int(min(nfds, 4)) { close(fds[i]) }
        if n < 0 { throw .system(Errno(rawValue: Int32(-n))) }
        if n == 0 { throw .closed }
        guard n <= ControlRequest.maxDatagramSize else { throw .malformed("oversized datagram") }
        do {
            let value = try JSONParser.parse(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            guard let object = value.objectValue else { throw ClientError.malformed("not an object") }
            return object
        } catch let f as ClientError {
            throw f
        } catch {
            throw .malformed("\(error)")
        }
    }

    /// The next reply (events are queued aside), or nil on timeout.
    package func receiveReply(timeoutMilliseconds: Int32 = 30_000) throws(ClientError) -> JSONObject {
        let deadline = MonotonicClock.nanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        while true {
            let now = MonotonicClock.nanoseconds()
            guard now < deadline else { throw .timedOut }
            guard let message = try receive(timeoutMilliseconds: Int32((deadline - now) / 1_000_000) + 1) else {
                continue
            }
            if message["event"] != nil {
                events.append(message)
                continue
            }
            return message
        }
    }

    /// Sends a command and returns its reply, whether ok or not.
    package func request(
        _ command: String, _ arguments: JSONObject = [:], fds: [Int32] = [], timeoutMilliseconds: Int32 = 30_000
    ) throws(ClientError) -> JSONObject {
        var object = JSONObject()
        object.set("cmd", .string(command))
        object.set("tag", .int(nextTag))
        nextTag += 1
        object.merge(arguments)
        do {
            try sendRaw(JSONWriter.serialize(.object(object)), fds: fds)
        } catch {
            // A daemon that refused this connection (too many connections, out of fds) may have
            // answered and closed before the request went out: its reply is still queued here.
            if case .system(let e) = error, e.rawValue == EPIPE || e.rawValue == ECONNRESET,
                let queued = try? receive(timeoutMilliseconds: 0), queued["event"] == nil
            {
                return queued
            }
            throw error
        }
        return try receiveReply(timeoutMilliseconds: timeoutMilliseconds)
    }

    /// Sends a command; an `ok: false` reply becomes `ClientError.refused`.
    @discardableResult
    package func call(
        _ command: String, _ arguments: JSONObject = [:], fds: [Int32] = [], timeoutMilliseconds: Int32 = 30_000
    ) throws(ClientError) -> JSONObject {
        let reply = try request(command, arguments, fds: fds, timeoutMilliseconds: timeoutMilliseconds)
        if reply["ok"]?.boolValue == true { return reply }
        let error = reply["error"]?.objectValue
        throw .refused(code: error?["code"]?.stringValue ?? "?", message: error?["message"]?.stringValue ?? "")
    }

    /// The next event (queued or arriving within the timeout).
    package func nextEvent(timeoutMilliseconds: Int32) throws(ClientError) -> JSONObject? {
        if !events.isEmpty { return events.removeFirst() }
        let deadline = MonotonicClock.nanoseconds() + UInt64(max(0, timeoutMilliseconds)) * 1_000_000
        while true {
            let now = MonotonicClock.nanoseconds()
            let left = now < deadline ? Int32((deadline - now) / 1_000_000) : 0
            guard let message = try receive(timeoutMilliseconds: left) else { return nil }
            if message["event"] != nil { return message }
            if left == 0 { return nil }
        }
    }

    /// Events received so far while waiting for replies.
    package func drainQueuedEvents() -> [JSONObject] {
        defer { events.removeAll() }
        return events
    }
}
