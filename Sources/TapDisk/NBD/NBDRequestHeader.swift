/// The 28-byte header of a transmission request, decoded once from the receive buffer. The
/// parser validates this copy, never the buffer, so nothing the peer sends after the decode (or
/// a later overwrite of the buffer) can change a field between its check and its use.
package struct NBDRequestHeader: Equatable, Sendable {
    package static let byteCount = 28

    package var magic: UInt32
    package var flags: NBDCommandFlags
    package var type: UInt16
    package var cookie: UInt64
    package var offset: UInt64
    package var length: UInt32

    package init(
        magic: UInt32 = NBDMagic.request, flags: NBDCommandFlags = [], type: UInt16, cookie: UInt64, offset: UInt64,
        length: UInt32
    ) {
        self.magic = magic
        self.flags = flags
        self.type = type
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    /// Decodes the first 28 bytes of `bytes` (the caller guarantees that many).
    @inline(__always)
    package init(bytes: UnsafeRawBufferPointer) {
        magic = NBDWire.load(UInt32.self, from: bytes, at: 0)
        flags = NBDCommandFlags(rawValue: NBDWire.load(UInt16.self, from: bytes, at: 4))
        type = NBDWire.load(UInt16.self, from: bytes, at: 6)
        cookie = NBDWire.load(UInt64.self, from: bytes, at: 8)
        offset = NBDWire.load(UInt64.self, from: bytes, at: 16)
        length = NBDWire.load(UInt32.self, from: bytes, at: 24)
    }

    /// The wire form (for clients and tests).
    package func append(to bytes: inout [UInt8]) {
        NBDWire.append(magic, to: &bytes)
        NBDWire.append(flags.rawValue, to: &bytes)
        NBDWire.append(type, to: &bytes)
        NBDWire.append(cookie, to: &bytes)
        NBDWire.append(offset, to: &bytes)
        NBDWire.append(length, to: &bytes)
    }

    /// How many payload bytes follow this header on the wire: the length of a write, else 0.
    /// Known from the raw type alone, so the stream stays in step even when the request is refused.
    package var payloadLength: UInt32 { type == NBDCommand.write.rawValue ? length : 0 }
}
