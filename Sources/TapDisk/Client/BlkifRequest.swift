import CLibAIO

/// One segment of a request: sectors `first...last` (0...7) of data page `gref`.
package struct BlkifSegment: Sendable, Equatable {
    package var gref: UInt32
    package var firstSector: UInt8
    package var lastSector: UInt8

    package init(gref: UInt32, firstSector: UInt8 = 0, lastSector: UInt8 = 7) {
        self.gref = gref
        self.firstSector = firstSector
        self.lastSector = lastSector
    }

    package var byteCount: Int { (Int(lastSector) - Int(firstSector) + 1) * RingLayout.sectorSize }
}

/// Builders for request slots, as a frontend writes them.
package enum BlkifRequest {
    package static func make(
        operation: UInt8, id: UInt64, sector: UInt64, segments: [BlkifSegment] = [], nrSegments: UInt8? = nil
    ) -> clibaio_blkif_request {
        var r = clibaio_blkif_request()
        r.operation = operation
        r.id = id
        r.sector_number = sector
        r.nr_segments = nrSegments ?? UInt8(truncatingIfNeeded: segments.count)
        withUnsafeMutableBytes(of: &r.seg) { raw in
            let segs = raw.bindMemory(to: clibaio_blkif_segment.self)
            for (i, s) in segments.prefix(RingLayout.maxSegments).enumerated() {
                segs[i] = clibaio_blkif_segment(
                    gref: s.gref, first_sect: s.firstSector, last_sect: s.lastSector, pad: 0)
            }
        }
        return r
    }

    package static func read(id: UInt64, sector: UInt64, segments: [BlkifSegment]) -> clibaio_blkif_request {
        make(operation: BlkifOperation.read.rawValue, id: id, sector: sector, segments: segments)
    }

    package static func write(id: UInt64, sector: UInt64, segments: [BlkifSegment]) -> clibaio_blkif_request {
        make(operation: BlkifOperation.write.rawValue, id: id, sector: sector, segments: segments)
    }

    package static func flush(id: UInt64, sector: UInt64 = 0, segments: [BlkifSegment] = []) -> clibaio_blkif_request {
        make(operation: BlkifOperation.flushDiskCache.rawValue, id: id, sector: sector, segments: segments)
    }

    package static func barrier(id: UInt64, sector: UInt64 = 0, segments: [BlkifSegment] = []) -> clibaio_blkif_request
    {
        make(operation: BlkifOperation.writeBarrier.rawValue, id: id, sector: sector, segments: segments)
    }

    /// DISCARD: `nr_sectors` at offset 24; `secure` sets flag bit 0 (answered EOPNOTSUPP).
    package static func discard(id: UInt64, sector: UInt64, sectors: UInt64, secure: Bool = false)
        -> clibaio_blkif_request
    {
        var r = make(operation: BlkifOperation.discard.rawValue, id: id, sector: sector)
        r.nr_segments = secure ? 1 : 0
        withUnsafeMutableBytes(of: &r) { raw in
            raw.storeBytes(of: sectors.littleEndian, toByteOffset: 24, as: UInt64.self)
        }
        return r
    }
}
