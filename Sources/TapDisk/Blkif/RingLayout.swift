import CLibAIO

/// The blkif shared-ring geometry (Xen `io/ring.h`, x86_64 ABI), docs/protocol.md §4.
package enum RingLayout {
    package static let pageSize = 4096
    package static let sectorSize = 512
    package static let sectorsPerPage = 8
    package static let headerSize = Int(CLIBAIO_RING_HEADER_SIZE)
    package static let slotSize = Int(CLIBAIO_BLKIF_SLOT_SIZE)
    package static let maxSegments = Int(CLIBAIO_BLKIF_MAX_SEGMENTS)
    /// `indirect-segments`: the most segments one INDIRECT request may carry (1 MiB, as Linux
    /// blkback's `MAX_INDIRECT_SEGMENTS`), advertised in `info` and `attach` features.
    package static let maxIndirectSegments = 256
    /// Segment descriptors an indirect page holds (4096 / 8).
    package static let segmentsPerIndirectPage = Int(CLIBAIO_BLKIF_SEGMENTS_PER_INDIRECT_PAGE)
    /// `indirect_grefs` in an INDIRECT slot.
    package static let maxIndirectPages = Int(CLIBAIO_BLKIF_MAX_INDIRECT_PAGES)
    /// `--max-ring-page-order` may not exceed this (a 1 MiB ring, 8192 entries).
    package static let maxPageOrder = 8
    package static let maxDataPages = 262_144

    /// Header field offsets; each is accessed as one aligned 32-bit atomic.
    package static let reqProdOffset = 0
    package static let reqEventOffset = 4
    package static let rspProdOffset = 8
    package static let rspEventOffset = 12

    /// `(2^order * 4096 - 64) / 112`, rounded down to a power of two, as Xen's `__RD32` does.
    package static func entries(pageOrder: Int) -> UInt32 {
        precondition(pageOrder >= 0 && pageOrder <= 20)
        let raw = ((1 << pageOrder) * pageSize - headerSize) / slotSize
        var p = 1
        while p * 2 <= raw { p *= 2 }
        return UInt32(p)
    }

    /// Byte offset of the slot an index maps to; indices are free-running u32s.
    @inline(__always)
    package static func slotOffset(index: UInt32, entries: UInt32) -> Int {
        headerSize + Int(index & (entries &- 1)) * slotSize
    }

    /// Size of the shared memory the frontend must provide.
    package static func sharedBytes(pageOrder: Int, dataPages: Int) -> Int {
        ((1 << pageOrder) + dataPages) * pageSize
    }
}
