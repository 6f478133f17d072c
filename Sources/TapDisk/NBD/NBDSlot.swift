/// One NBD request from its header to its last reply byte on the socket. A slot outlives the
/// engine's record: the record is released when the I/O is answered, the slot (and its
/// buffers) only when the reply has been written, since a read's data is sent from its chunks.
struct NBDSlot {
    enum Phase: UInt8 {
        case free
        /// A write's payload is arriving into the slot's chunks.
        case receiving
        /// A refused write's payload is being read and dropped; the error reply waits for it.
        case discarding
        /// In the engine.
        case executing
        /// The reply is in its connection's output queue.
        case queued
    }

    var phase: Phase = .free
    var connection: Int32 = -1
    /// The connection's generation when the request arrived: a reply for an older generation
    /// (the client went away, the entry was reused) is dropped, never written to a stranger.
    var generation: UInt32 = 0
    var cookie: UInt64 = 0
    var command: NBDCommand = .read
    var flags: NBDCommandFlags = []
    var offset: UInt64 = 0
    var length: UInt32 = 0
    var chunkCount: Int32 = 0
    /// Payload bytes received (write) or dropped (refused write).
    var received: Int = 0
    /// The FUA flush after a write has been issued.
    var flushIssued = false
    /// Reply bytes: the header in the slot's header area, then `dataLength` bytes from its chunks.
    var headerLength: Int32 = 0
    var dataLength: Int = 0
    var sent: Int = 0
    /// The next slot in the connection's output queue (-1: last).
    var next: Int32 = -1
}
