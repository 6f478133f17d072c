/// One client in the transmission phase: its socket, what it negotiated, its receive buffer
/// and its output queue. Plain values in a preallocated array, addressed by index, so the
/// request path takes no reference and allocates nothing.
struct NBDConnection {
    enum Pending: Equatable {
        case none
        /// A write's payload into this slot.
        case payload(Int32)
        /// A refused write's payload to drop before this slot's error reply.
        case discard(Int32)
    }

    var fd: Int32 = -1
    /// Bumped each time the entry is taken, so late completions of a former client are dropped.
    var generation: UInt32 = 0
    var inUse = false
    var parser = NBDRequestParser(
        export: NBDExport(name: "", size: 0, minimumBlockSize: 512, readOnly: true),
        session: NBDSession(
            structuredReplies: false, allocationContext: nil, transmissionFlags: [], agreedBlockSize: false,
            exportName: ""))
    var structured = false
    var contextID: UInt32 = 0
    /// Bytes `recvStart..<recvEnd` of this connection's receive buffer are unparsed.
    var recvStart = 0
    var recvEnd = 0
    var pending = Pending.none
    var queueHead: Int32 = -1
    var queueTail: Int32 = -1
    /// Slots and chunks this connection holds (receiving, executing or queued).
    var slots = 0
    var chunks = 0
    /// The socket had data at the last edge and has not said EAGAIN since.
    var readable = false
    /// Waiting for a slot or chunks: not read again until some are released.
    var blocked = false
    /// No more requests will be read: `NBD_CMD_DISC`, end of file, or a hard disconnect.
    var closing = false
    /// The socket is shut down (hard disconnect or end of file): replies are dropped.
    var dead = false
    /// When the output queue last moved (or became non-empty): a client that stops reading its
    /// replies is disconnected after `NBDTransmission.stallNanos`.
    var lastOutputProgress: UInt64 = 0
    /// Replies were queued since the last `flushAll`.
    var hasOutput = false
    var requests: UInt64 = 0
    var connectedAt: UInt64 = 0
}
