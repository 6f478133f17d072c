import CLibAIO

/// BLKIF_OP_INDIRECT (docs/protocol.md §4.1): the slot names up to 8 data pages that hold the segment
/// descriptors. Like a slot, the descriptors are hostile shared memory: they are copied ONCE into
/// private memory and only that copy is validated and later turned into iovecs (XSA-155).
extension RequestValidator {
    /// What the INDIRECT slot itself asks for, once its own fields passed their checks.
    package struct IndirectSlot: Equatable, Sendable {
        /// The `indirect_op`: READ or WRITE.
        package var operation: BlkifOperation
        /// `nr_segments`, 1...`RingLayout.maxIndirectSegments`.
        package var segmentCount: Int
        /// Indirect pages in use: `ceil(segmentCount / 512)`; later `indirect_grefs` are ignored.
        package var pageCount: Int
    }

    package enum IndirectSlotOutcome: Equatable, Sendable {
        case accept(IndirectSlot)
        case reject(Rejection)
    }

    /// The byte an INDIRECT request is answered with, valid or not: its raw `indirect_op` (§4.1).
    @inline(__always)
    package static func indirectResponseOperation(_ r: clibaio_blkif_request) -> UInt8 { r.nr_segments }

    /// `indirect_grefs[i]` of a slot copy.
    @inline(__always)
    package static func indirectGref(_ r: clibaio_blkif_request, _ i: Int) -> UInt32 {
        precondition(i >= 0 && i < RingLayout.maxIndirectPages)
        return withUnsafeBytes(of: r) { $0.load(fromByteOffset: 28 + 4 * i, as: UInt32.self) }
    }

    /// `nr_segments` (u16 @2) of an INDIRECT slot copy.
    @inline(__always)
    package static func indirectSegmentCount(_ r: clibaio_blkif_request) -> Int { Int(r.handle) }

    /// The checks that need only the slot copy, in order: `indirect_op`, then `nr_segments`, then
    /// every indirect page in use `< data-pages`.
    package func validateIndirectSlot(_ r: clibaio_blkif_request) -> IndirectSlotOutcome {
        guard let op = BlkifOperation(rawValue: r.nr_segments), op == .read || op == .write else {
            return .reject(.badIndirectOperation)
        }
        let n = Self.indirectSegmentCount(r)
        if n == 0 || n > RingLayout.maxIndirectSegments { return .reject(.badSegmentCount) }
        let pages = (n + RingLayout.segmentsPerIndirectPage - 1) / RingLayout.segmentsPerIndirectPage
        for i in 0..<pages where Self.indirectGref(r, i) >= dataPages {
            return .reject(.indirectGrefOutOfRange)
        }
        return .accept(IndirectSlot(operation: op, segmentCount: n, pageCount: pages))
    }

    /// A whole INDIRECT request: the slot checks, then the descriptors copied once from the
    /// indirect pages (data pages of the mapping at `dataBase`) into `descriptors` (room for
    /// `RingLayout.maxIndirectSegments`), then the §5.1 segment rules on that copy only. On
    /// `.accept` the request's segments are `descriptors[0..<indirectSegmentCount(r)]`; the pages
    /// are never read again, so a frontend rewriting them later changes nothing.
    package func validateIndirect(
        _ r: clibaio_blkif_request, dataBase: UnsafeRawPointer,
        descriptors: UnsafeMutablePointer<clibaio_blkif_segment>
    ) -> Outcome {
        let slot: IndirectSlot
        switch validateIndirectSlot(r) {
        case .reject(let why): return .reject(why)
        case .accept(let s): slot = s
        }
        var copied = 0
        for page in 0..<slot.pageCount {
            let n = min(RingLayout.segmentsPerIndirectPage, slot.segmentCount - copied)
            let source = dataBase + Int(Self.indirectGref(r, page)) * RingLayout.pageSize
            clibaio_blkif_copy_segments(descriptors + copied, source, UInt32(n))
            copied += n
        }
        return validateSegments(
            operation: slot.operation, sector: r.sector_number, segments: descriptors, count: slot.segmentCount)
    }
}
