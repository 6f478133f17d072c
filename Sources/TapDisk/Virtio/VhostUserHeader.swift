/// The 12-byte header in front of every vhost-user message: request, flags, payload size
/// (little-endian u32s; this backend runs on little-endian hosts only, like the rest of tapdiskd).
package struct VhostUserHeader: Equatable, Sendable {
    package var request: UInt32
    package var flags: UInt32
    package var size: UInt32

    package static let byteCount = 12
    /// Bits 0-1: protocol version, always 1.
    package static let versionMask: UInt32 = 0x3
    package static let version: UInt32 = 0x1
    /// Bit 2: set on every message the back-end sends in answer.
    package static let replyFlag: UInt32 = 0x4
    /// Bit 3: the front-end wants a REPLY_ACK (only honoured when REPLY_ACK was negotiated).
    package static let needReplyFlag: UInt32 = 0x8

    package init(request: UInt32, flags: UInt32, size: UInt32) {
        self.request = request
        self.flags = flags
        self.size = size
    }

    /// Decodes the first 12 bytes (the caller guarantees at least that many).
    package init(bytes: UnsafeRawBufferPointer) {
        request = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        flags = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        size = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
    }

    package var needsReply: Bool { flags & Self.needReplyFlag != 0 }

    /// The header of an answer to `request` carrying `size` payload bytes.
    package static func reply(to request: UInt32, size: Int) -> VhostUserHeader {
        VhostUserHeader(request: request, flags: version | replyFlag, size: UInt32(size))
    }

    package func append(to bytes: inout [UInt8]) {
        for value in [request, flags, size] { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }
    }
}
