/// Big-endian encoding and decoding for the handshake, where messages are small and built in
/// growable arrays. (The transmission path writes into preallocated buffers instead, with
/// `NBDReplyEncoder`.)
package enum NBDWire {
    @inline(__always)
    package static func append<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }

    /// The big-endian `T` at `offset`; the caller has checked the bounds.
    @inline(__always)
    package static func load<T: FixedWidthInteger>(_: T.Type, from bytes: UnsafeRawBufferPointer, at offset: Int) -> T {
        T(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// The big-endian `T` at `offset` of `bytes`, or nil if it does not fit.
    package static func read<T: FixedWidthInteger>(_: T.Type, from bytes: ArraySlice<UInt8>, at offset: Int) -> T? {
        let size = MemoryLayout<T>.size
        guard offset >= 0, offset <= bytes.count - size else { return nil }
        return bytes.withUnsafeBytes { load(T.self, from: $0, at: offset) }
    }
}
