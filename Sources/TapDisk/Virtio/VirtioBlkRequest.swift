import CLibAIO
import Glibc

/// virtio-blk status byte values.
package enum VirtioBlkStatus: UInt8, Sendable {
    case ok = 0
    case ioError = 1
    case unsupported = 2

    /// Stores the status byte into guest memory (a single byte store).
    @inline(__always)
    package func write(to status: UnsafeMutablePointer<UInt8>) {
        clibaio_store_u8_relaxed(status, rawValue)
    }
}

/// virtio_blk_outhdr.type values this backend knows.
package enum VirtioBlkType {
    package static let read: UInt32 = 0
    package static let write: UInt32 = 1
    package static let flush: UInt32 = 4
    package static let getID: UInt32 = 8
    package static let discard: UInt32 = 11
    package static let writeZeroes: UInt32 = 13
    /// GET_ID's answer is at most 20 bytes (VIRTIO_BLK_ID_BYTES).
    package static let idBytes = 20
}

/// The disk as virtio-blk requests are judged against it.
package struct VirtioBlkDisk: Sendable {
    package var capacitySectors: UInt64
    /// Logical block size (a power of two, ≥ 512): data lengths and sectors must be multiples.
    package var blockSize: UInt32
    package var readOnly: Bool
    /// DISCARD and WRITE_ZEROES offered (never on a read-only disk).
    package var discard: Bool
    package var maxDiscardSectors: UInt32
    package var maxWriteZeroesSectors: UInt32

    package init(
        capacitySectors: UInt64, blockSize: UInt32, readOnly: Bool, discard: Bool, maxDiscardSectors: UInt32,
        maxWriteZeroesSectors: UInt32
    ) {
        self.capacitySectors = capacitySectors
        self.blockSize = blockSize
        self.readOnly = readOnly
        self.discard = discard && !readOnly
        self.maxDiscardSectors = maxDiscardSectors
        self.maxWriteZeroesSectors = maxWriteZeroesSectors
    }
}

/// Why a well-formed chain is answered without I/O.
package enum VirtioBlkRejection: Equatable, Sendable {
    case unsupportedType(UInt32)
    /// Data in the wrong direction for the type (read data device-readable, and so on).
    case wrongDirection
    case emptyTransfer
    /// Length or sector not a multiple of the logical block size.
    case misaligned
    case beyondCapacity
    case readOnly
    /// A DISCARD / WRITE_ZEROES payload that is not exactly one 16-byte segment.
    case badSegmentPayload
    case tooManySectors
    /// Flags outside what the type allows (UNSUPP per the spec).
    case unsupportedFlags(UInt32)
}

/// What a validated chain asks the disk to do, or how to answer it without I/O.
package enum VirtioBlkRequest: Equatable, Sendable {
    case read(sector: UInt64, bytes: UInt64)
    case write(sector: UInt64, bytes: UInt64)
    case flush
    /// Write min(bytes, 20) bytes of the serial into the writable data.
    case getID(bytes: UInt64)
    case discard(sector: UInt64, sectors: UInt32)
    case writeZeroes(sector: UInt64, sectors: UInt32, unmap: Bool)
    case reject(VirtioBlkStatus, VirtioBlkRejection)

    package static let sectorSize: UInt64 = 512

    /// Judges `chain` (whose data lies in `storage`) against `disk`. Pure apart from copying a
    /// DISCARD/WRITE_ZEROES segment out of guest memory once.
    package static func classify(
        _ chain: VirtqueueChain, storage: UnsafeMutableBufferPointer<iovec>, disk: VirtioBlkDisk
    ) -> VirtioBlkRequest {
        let readable = chain.readableBytes
        let writable = chain.writableBytes
        switch chain.type {
        case VirtioBlkType.read, VirtioBlkType.write:
            let isRead = chain.type == VirtioBlkType.read
            if isRead ? readable != 0 : writable != 0 { return .reject(.ioError, .wrongDirection) }
            let bytes = isRead ? writable : readable
            if !isRead && disk.readOnly { return .reject(.ioError, .readOnly) }
            if bytes == 0 { return .reject(.ioError, .emptyTransfer) }
            let blockSectors = UInt64(disk.blockSize) / sectorSize
            if bytes % UInt64(disk.blockSize) != 0 || chain.sector % blockSectors != 0 {
                return .reject(.ioError, .misaligned)
            }
            guard inCapacity(chain.sector, bytes / sectorSize, disk) else { return .reject(.ioError, .beyondCapacity) }
            return isRead ? .read(sector: chain.sector, bytes: bytes) : .write(sector: chain.sector, bytes: bytes)
        case VirtioBlkType.flush:
            if readable != 0 || writable != 0 { return .reject(.ioError, .wrongDirection) }
            return .flush
        case VirtioBlkType.getID:
            if readable != 0 { return .reject(.ioError, .wrongDirection) }
            if writable == 0 { return .reject(.ioError, .emptyTransfer) }
            return .getID(bytes: writable)
        case VirtioBlkType.discard, VirtioBlkType.writeZeroes:
            let isDiscard = chain.type == VirtioBlkType.discard
            guard disk.discard else { return .reject(.unsupported, .unsupportedType(chain.type)) }
            if writable != 0 { return .reject(.ioError, .wrongDirection) }
            guard readable == 16, let segment = copySegment(storage, count: chain.readableSegments) else {
                return .reject(.ioError, .badSegmentPayload)
            }
            let sector = UInt64(littleEndian: segment.sector)
            let sectors = UInt32(littleEndian: segment.num_sectors)
            let flags = UInt32(littleEndian: segment.flags)
            let allowedFlags: UInt32 = isDiscard ? 0 : 1
            if flags & ~allowedFlags != 0 { return .reject(.unsupported, .unsupportedFlags(flags)) }
            if sectors == 0 { return .reject(.ioError, .emptyTransfer) }
            if sectors > (isDiscard ? disk.maxDiscardSectors : disk.maxWriteZeroesSectors) {
                return .reject(.ioError, .tooManySectors)
            }
            let blockSectors = UInt64(disk.blockSize) / sectorSize
            if sector % blockSectors != 0 || UInt64(sectors) % blockSectors != 0 {
                return .reject(.ioError, .misaligned)
            }
            guard inCapacity(sector, UInt64(sectors), disk) else { return .reject(.ioError, .beyondCapacity) }
            return isDiscard
                ? .discard(sector: sector, sectors: sectors)
                : .writeZeroes(sector: sector, sectors: sectors, unmap: flags & 1 != 0)
        default:
            return .reject(.unsupported, .unsupportedType(chain.type))
        }
    }

    /// Overflow-safe `sector + count <= capacity`.
    @inline(__always)
    private static func inCapacity(_ sector: UInt64, _ count: UInt64, _ disk: VirtioBlkDisk) -> Bool {
        sector <= disk.capacitySectors && count <= disk.capacitySectors - sector
    }

    /// Gathers the 16-byte segment from the readable iovecs, reading guest memory once.
    private static func copySegment(
        _ storage: UnsafeMutableBufferPointer<iovec>, count: Int
    ) -> clibaio_virtio_blk_discard_write_zeroes? {
        var segment = clibaio_virtio_blk_discard_write_zeroes()
        var filled = 0
        withUnsafeMutableBytes(of: &segment) { dst in
            for i in 0..<count {
                let v = storage[i]
                let take = min(v.iov_len, 16 - filled)
                guard take > 0, let base = v.iov_base else { continue }
                clibaio_shared_copy(dst.baseAddress! + filled, base, take)
                filled += take
            }
        }
        return filled == 16 ? segment : nil
    }
}
