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
    /// Whether epoll currently watches EPOLLOUT (the outbox is non-empty).
    var watchingWritable = false

    init(fd: consuming FileDescriptor, token: UInt64) {
        self.fd = fd
        self.token = token
    }
}
