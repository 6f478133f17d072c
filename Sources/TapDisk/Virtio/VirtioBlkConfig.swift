/// struct virtio_blk_config (virtio 1.x §5.2.4), encoded little-endian for GET_CONFIG.
///
/// The offsets are the spec's; `VhostUserVirtioBlkTests.configOffsetsMatchTheKernelHeader` holds
/// them to <linux/virtio_blk.h> via the offsetof constants in CLibAIO (and vhost.c
/// `_Static_assert`s them at build time).
package struct VirtioBlkConfig: Equatable, Sendable {
    /// Capacity in 512-byte sectors, whatever the logical block size.
    package var capacity: UInt64
    package var sizeMax: UInt32
    package var segMax: UInt32
    package var blockSize: UInt32
    /// log2(physical block / logical block).
    package var physicalBlockExponent: UInt8 = 0
    package var minIOSize: UInt16 = 0
    package var optIOSize: UInt32 = 0
    package var numQueues: UInt16 = 1
    package var maxDiscardSectors: UInt32 = 0
    package var maxDiscardSegments: UInt32 = 0
    package var discardSectorAlignment: UInt32 = 0
    package var maxWriteZeroesSectors: UInt32 = 0
    package var maxWriteZeroesSegments: UInt32 = 0
    package var writeZeroesMayUnmap: UInt8 = 0

    package enum Offset {
        package static let capacity = 0
        package static let sizeMax = 8
        package static let segMax = 12
        package static let geometry = 16
        package static let blockSize = 20
        package static let physicalBlockExponent = 24
        package static let minIOSize = 26
        package static let optIOSize = 28
        package static let writeCacheEnable = 32
        package static let numQueues = 34
        package static let maxDiscardSectors = 36
        package static let maxDiscardSegments = 40
        package static let discardSectorAlignment = 44
        package static let maxWriteZeroesSectors = 48
        package static let maxWriteZeroesSegments = 52
        package static let writeZeroesMayUnmap = 56
    }

    /// Up to and including unused1[3]: the secure-erase fields that follow are not offered.
    package static let byteCount = 60

    package init(capacity: UInt64, sizeMax: UInt32, segMax: UInt32, blockSize: UInt32) {
        self.capacity = capacity
        self.sizeMax = sizeMax
        self.segMax = segMax
        self.blockSize = blockSize
    }

    package func bytes() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.byteCount)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { raw in
                for (i, byte) in raw.enumerated() { b[offset + i] = byte }
            }
        }
        put(capacity, Offset.capacity)
        put(sizeMax, Offset.sizeMax)
        put(segMax, Offset.segMax)
        put(blockSize, Offset.blockSize)
        put(physicalBlockExponent, Offset.physicalBlockExponent)
        put(minIOSize, Offset.minIOSize)
        put(optIOSize, Offset.optIOSize)
        put(numQueues, Offset.numQueues)
        put(maxDiscardSectors, Offset.maxDiscardSectors)
        put(maxDiscardSegments, Offset.maxDiscardSegments)
        put(discardSectorAlignment, Offset.discardSectorAlignment)
        put(maxWriteZeroesSectors, Offset.maxWriteZeroesSectors)
        put(maxWriteZeroesSegments, Offset.maxWriteZeroesSegments)
        put(writeZeroesMayUnmap, Offset.writeZeroesMayUnmap)
        return b
    }

    /// The GET_CONFIG window `[offset, offset + size)`: zeros past the fields we define (config
    /// space QEMU may size larger, up to 256), nil when the window leaves those 256 bytes.
    package func window(offset: UInt32, size: UInt32) -> [UInt8]? {
        let end = UInt64(offset) + UInt64(size)
        guard end <= UInt64(VhostUserLimits.maxConfigSize) else { return nil }
        var all = bytes()
        all += [UInt8](repeating: 0, count: VhostUserLimits.maxConfigSize - all.count)
        return Array(all[Int(offset)..<Int(end)])
    }
}
