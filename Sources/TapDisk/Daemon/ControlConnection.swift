import CLibAIO
import Glibc

/// One accepted control connection: its socket, its outgoing queue and its subscription.
///
/// Replies keep request order because a connection with a reply still owed (a `pause` waiting
/// for quiescence, a `detach` waiting for drain) is not read until that reply is sent.
final class ControlConnection {
    /// A reply the daemon owes once the engine reaches a condition.
    enum Deferred {
        case pause(tag: JSONValue?)
        case detach(tag: JSONValue?, responsesAtStart: UInt64)
    }

    /// Events beyond this many queued datagrams are dropped and counted (§2: at least 64).
    static let eventQueueLimit = 64
    /// A client that lets this many replies pile up is closed rather than buffered without bound.
    static let replyQueueLimit = 256

    let fd: FileDescriptor
    let token: UInt64
    var outbox: [[UInt8]] = []
    var subscribed = false
    var droppedEvents: UInt64 = 0
    var deferred: Deferred? = nil
    /// Set when the peer hung up or a send failed; the daemon closes it after the current batch.
    var isClosed = false

    init(fd: consuming FileDescriptor, token: UInt64) {
        self.fd = fd
        self.token = token
    }

    // MARK: - Datagram I/O

    /// What one read found.
    enum Incoming {
        /// `count` bytes in the caller's buffer, and the fds that came with them (the caller
        /// closes them); `controlTruncated` when the fds did not all fit.
        case datagram(count: Int, fds: [Int32], controlTruncated: Bool)
        /// Nothing more to read now, or the connection is gone (`isClosed` is then set).
        case nothing
    }

    /// Reads one datagram into `buffer` (at most 8 fds are accepted with it).
    func receive(into buffer: UnsafeMutableRawBufferPointer) -> Incoming {
        var fds = [Int32](repeating: -1, count: 8)
        var nfds: Int32 = 0
        var flags: Int32 = 0
        let n = clibaio_recv_datagram(fd.rawValue, buffer.baseAddress, buffer.count, &fds, 8, &nfds, &flags)
        if n < 0 {
            if -n != EAGAIN && -n != EINTR { isClosed = true }
            return .nothing
        }
        let received = Array(fds.prefix(Int(min(max(nfds, 0), 8))))
        // recv returns 0 both for an empty datagram and at EOF (§2): only a hang-up is EOF.
        if n == 0 && received.isEmpty && clibaio_peer_hung_up(fd.rawValue) == 1 {
            isClosed = true
            return .nothing
        }
        // A datagram longer than the buffer reports its full length (MSG_TRUNC): only the
        // buffer's worth is there, which is one byte over the limit, so it is refused as such.
        let count = flags & clibaio_MSG_TRUNC != 0 ? buffer.count : min(n, buffer.count)
        return .datagram(count: count, fds: received, controlTruncated: flags & clibaio_MSG_CTRUNC != 0 || nfds > 8)
    }

    /// The peer hung up and nothing more is queued for reading.
    var peerHasLeft: Bool {
        guard clibaio_peer_hung_up(fd.rawValue) == 1 else { return false }
        var probe: UInt8 = 0
        return recv(fd.rawValue, &probe, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) <= 0
    }

    /// Sends now, or queues behind what is already queued. True when the outbox changed (the
    /// caller then watches EPOLLOUT). A failed send other than EAGAIN marks the connection closed.
    func send(_ bytes: [UInt8]) -> Bool {
        guard !isClosed else { return false }
        if outbox.isEmpty {
            let n = bytes.withUnsafeBytes { clibaio_send_datagram(fd.rawValue, $0.baseAddress, $0.count, nil, 0, 1) }
            if n >= 0 { return false }
            if -n != EAGAIN {
                isClosed = true
                return false
            }
        }
        outbox.append(bytes)
        return true
    }

    /// Sends what the outbox holds until the socket would block.
    func flush() {
        while !outbox.isEmpty {
            let n = outbox[0].withUnsafeBytes {
                clibaio_send_datagram(fd.rawValue, $0.baseAddress, $0.count, nil, 0, 1)
            }
            if n < 0 {
                if -n != EAGAIN { isClosed = true }
                break
            }
            outbox.removeFirst()
        }
    }

    /// The epoll events this connection needs: input unless a reply is owed, output while
    /// something is queued.
    var wantedEvents: UInt32 {
        var events: UInt32 = deferred == nil ? clibaio_EPOLLIN | clibaio_EPOLLRDHUP : 0
        if !outbox.isEmpty { events |= clibaio_EPOLLOUT }
        return events
    }
}
