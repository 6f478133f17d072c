/// Writes NBD replies into caller-owned memory (a connection's preallocated output ring), so
/// answering a request allocates nothing. Each function returns the bytes written; the caller
/// provides at least that much room (the `…Length` constants).
package enum NBDReplyEncoder {
    package static let simpleReplyLength = 16
    package static let chunkHeaderLength = 20
    /// Chunk header plus the 64-bit offset; the data follows.
    package static let offsetDataHeaderLength = 28
    /// Chunk header plus error (32) and message length (16), no message.
    package static let errorChunkLength = 26
    /// Chunk header plus the 32-bit context id; the descriptors follow.
    package static let blockStatusHeaderLength = 24
    package static let extentLength = 8

    @inline(__always)
    private static func store<T: FixedWidthInteger>(_ value: T, _ at: UnsafeMutableRawPointer, _ offset: Int) {
        at.storeBytes(of: value.bigEndian, toByteOffset: offset, as: T.self)
    }

    /// A simple reply: magic, error (0 for success), cookie. A successful read's data follows.
    @inline(__always)
    package static func simpleReply(cookie: UInt64, error: NBDError?, at p: UnsafeMutableRawPointer) -> Int {
        store(NBDMagic.simpleReply, p, 0)
        store(error?.rawValue ?? 0, p, 4)
        store(cookie, p, 8)
        return simpleReplyLength
    }

    @inline(__always)
    package static func chunkHeader(
        cookie: UInt64, type: NBDReplyType, flags: NBDReplyFlags, length: UInt32, at p: UnsafeMutableRawPointer
    ) -> Int {
        store(NBDMagic.structuredReply, p, 0)
        store(flags.rawValue, p, 4)
        store(type.rawValue, p, 6)
        store(cookie, p, 8)
        store(length, p, 16)
        return chunkHeaderLength
    }

    /// `NBD_REPLY_TYPE_NONE` with `DONE`: the end of a successful structured reply.
    @inline(__always)
    package static func done(cookie: UInt64, at p: UnsafeMutableRawPointer) -> Int {
        chunkHeader(cookie: cookie, type: .none, flags: .done, length: 0, at: p)
    }

    /// The header of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk carrying `dataLength` bytes. It is
    /// marked `DONE` only when the data is already complete in memory (read finished), so no
    /// error can surface after the chunk is sent, as the spec requires.
    @inline(__always)
    package static func offsetDataHeader(
        cookie: UInt64, offset: UInt64, dataLength: UInt32, done: Bool, at p: UnsafeMutableRawPointer
    ) -> Int {
        _ = chunkHeader(
            cookie: cookie, type: .offsetData, flags: NBDReplyFlags(rawValue: done ? 1 : 0), length: 8 + dataLength,
            at: p)
        store(offset, p, 20)
        return offsetDataHeaderLength
    }

    /// `NBD_REPLY_TYPE_ERROR` with `DONE` and no message: a failed structured reply.
    @inline(__always)
    package static func errorChunk(cookie: UInt64, error: NBDError, at p: UnsafeMutableRawPointer) -> Int {
        _ = chunkHeader(cookie: cookie, type: .error, flags: .done, length: 6, at: p)
        store(error.rawValue, p, 20)
        store(UInt16(0), p, 24)
        return errorChunkLength
    }

    /// The header of an `NBD_REPLY_TYPE_BLOCK_STATUS` chunk (with `DONE`: one context, one
    /// chunk) for `extents` descriptors that follow.
    @inline(__always)
    package static func blockStatusHeader(
        cookie: UInt64, contextID: UInt32, extents: Int, at p: UnsafeMutableRawPointer
    ) -> Int {
        _ = chunkHeader(
            cookie: cookie, type: .blockStatus, flags: .done, length: UInt32(4 + extentLength * extents), at: p)
        store(contextID, p, 20)
        return blockStatusHeaderLength
    }

    @inline(__always)
    package static func extent(length: UInt32, flags: NBDBlockStatusFlags, at p: UnsafeMutableRawPointer) -> Int {
        store(length, p, 0)
        store(flags.rawValue, p, 4)
        return extentLength
    }

    /// The answer to a request that fails (or is refused) without data: an error chunk when the
    /// client negotiated structured replies (the spec forbids a simple reply to a read then),
    /// else a simple reply.
    @inline(__always)
    package static func failure(
        cookie: UInt64, error: NBDError, structured: Bool, at p: UnsafeMutableRawPointer
    ) -> Int {
        structured ? errorChunk(cookie: cookie, error: error, at: p) : simpleReply(cookie: cookie, error: error, at: p)
    }

    /// The answer to a request that succeeds without data (write, flush, trim, cache...): a
    /// simple reply, which the spec allows for every command but a read even with structured replies.
    @inline(__always)
    package static func success(cookie: UInt64, at p: UnsafeMutableRawPointer) -> Int {
        simpleReply(cookie: cookie, error: nil, at: p)
    }
}
