/// The chunk types of a structured reply; error chunks have bit 15 set.
package enum NBDReplyType: UInt16, Sendable {
    /// No payload; always the last chunk (with `NBDReplyFlags.done`).
    case none = 0
    /// 64-bit offset, then the data.
    case offsetData = 1
    /// 64-bit offset and 32-bit length of bytes that read as zeroes.
    case offsetHole = 2
    /// 32-bit metadata context id, then (length, flags) descriptors.
    case blockStatus = 5
    /// 32-bit error, 16-bit message length, the message.
    case error = 0x8001
    /// As `error`, then the 64-bit offset the error happened at.
    case errorOffset = 0x8002
}
