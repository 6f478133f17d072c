import CLibAIO

/// Builders for INDIRECT requests (§4.1), as a frontend writes them: the slot, and the
/// descriptor page(s) its `indirect_grefs` name.
extension BlkifRequest {
    /// An INDIRECT slot: `operation` 6, `indirect_op` @1, `nr_segments` u16 @2, `indirect_grefs`
    /// u32 × 8 @28. `nrSegments` is written as given, not derived from any descriptors, so tests
    /// can pass hostile values.
    package static func indirect(
        indirectOperation: UInt8, id: UInt64, sector: UInt64, nrSegments: UInt16, indirectGrefs: [UInt32]
    ) -> clibaio_blkif_request {
        precondition(indirectGrefs.count <= RingLayout.maxIndirectPages)
        var r = clibaio_blkif_request()
        withUnsafeMutableBytes(of: &r) { raw in
            raw.storeBytes(of: BlkifOperation.indirect.rawValue, toByteOffset: 0, as: UInt8.self)
            raw.storeBytes(of: indirectOperation, toByteOffset: 1, as: UInt8.self)
            raw.storeBytes(of: nrSegments.littleEndian, toByteOffset: 2, as: UInt16.self)
            raw.storeBytes(of: id.littleEndian, toByteOffset: 8, as: UInt64.self)
            raw.storeBytes(of: sector.littleEndian, toByteOffset: 16, as: UInt64.self)
            for (i, g) in indirectGrefs.enumerated() {
                raw.storeBytes(of: g.littleEndian, toByteOffset: 28 + 4 * i, as: UInt32.self)
            }
        }
        return r
    }

    /// Writes `segments` as 8-byte descriptors (the §4.1 segment layout) at the start of `page`.
    package static func writeDescriptors(_ segments: [BlkifSegment], to page: UnsafeMutableRawPointer) {
        precondition(segments.count <= RingLayout.segmentsPerIndirectPage)
        let d = page.bindMemory(to: clibaio_blkif_segment.self, capacity: segments.count)
        for (i, s) in segments.enumerated() {
            d[i] = clibaio_blkif_segment(gref: s.gref, first_sect: s.firstSector, last_sect: s.lastSector, pad: 0)
        }
    }
}

extension BlockFrontend {
    /// An INDIRECT request, ready to enqueue, whose descriptors go into data page `descriptorPage`
    /// (at most 512 segments: one indirect page).
    package func indirectRequest(
        write: Bool, id: UInt64, sector: UInt64, segments: [BlkifSegment], descriptorPage: UInt32
    ) -> clibaio_blkif_request {
        BlkifRequest.writeDescriptors(segments, to: page(descriptorPage))
        return BlkifRequest.indirect(
            indirectOperation: write ? BlkifOperation.write.rawValue : BlkifOperation.read.rawValue, id: id,
            sector: sector, nrSegments: UInt16(segments.count), indirectGrefs: [descriptorPage])
    }
}
