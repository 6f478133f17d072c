import CLibAIO

/// docs/protocol.md §5.1 over the private copy of a slot. Pure: it reads nothing but the copy and the
/// disk's fixed parameters, so every rule is testable without a ring or an image.
package struct RequestValidator: Sendable {
    package var dataPages: UInt32
    package var sectors: UInt64
    /// Logical block size in 512-byte sectors (1 for 512-byte disks).
    package var blockSectors: UInt64
    package var readOnly: Bool
    package var discardSupported: Bool

    package init(dataPages: UInt32, geometry: ImageGeometry, readOnly: Bool) {
        self.dataPages = dataPages
        self.sectors = geometry.sectors
        self.blockSectors = geometry.sectorsPerLogicalBlock
        self.readOnly = readOnly
        self.discardSupported = geometry.discard
    }

    package init(dataPages: UInt32, sectors: UInt64, blockSectors: UInt64, readOnly: Bool, discardSupported: Bool) {
        self.dataPages = dataPages
        self.sectors = sectors
        self.blockSectors = blockSectors
        self.readOnly = readOnly
        self.discardSupported = discardSupported
    }

    /// What the request asks for, once it passed every check.
    package struct Accepted: Equatable, Sendable {
        package var operation: BlkifOperation
        /// 512-byte sectors of data carried by the segments (0 for empty FLUSH/BARRIER).
        package var dataSectors: UInt64
        /// For DISCARD: the sectors to punch (0 = a no-op answered OKAY).
        package var discardSectors: UInt64
    }

    package enum Outcome: Equatable, Sendable {
        case accept(Accepted)
        case reject(Rejection)
    }

    @inline(__always)
    package func validate(_ r: clibaio_blkif_request) -> Outcome {
        // 1. EOPNOTSUPP: unknown operations. INDIRECT needs its descriptor pages: the engine
        // sends it to `validateIndirect` (RequestValidator+Indirect.swift) instead.
        guard let op = BlkifOperation(rawValue: r.operation), op != .indirect else {
            return .reject(.unsupportedOperation)
        }
        if op == .discard {
            guard discardSupported else { return .reject(.unsupportedOperation) }
            if r.nr_segments & 1 != 0 { return .reject(.secureDiscard) }
            return validateDiscard(r)
        }
        // 2. ERROR without I/O.
        let n = Int(r.nr_segments)
        switch op {
        case .read, .write:
            if n == 0 || n > RingLayout.maxSegments { return .reject(.badSegmentCount) }
        default:
            if n > RingLayout.maxSegments { return .reject(.badSegmentCount) }
        }
        return withUnsafeBytes(of: r.seg) { raw in
            validateSegments(
                operation: op, sector: r.sector_number,
                segments: raw.baseAddress!.assumingMemoryBound(to: clibaio_blkif_segment.self), count: n)
        }
    }

    /// The §5.1 segment, alignment, read-only and range rules over `count` segments that are
    /// already in private memory (a slot copy, or the copy of an INDIRECT request's descriptors).
    @inline(__always)
    package func validateSegments(
        operation op: BlkifOperation, sector: UInt64, segments segs: UnsafePointer<clibaio_blkif_segment>, count n: Int
    ) -> Outcome {
        var dataSectors: UInt64 = 0
        for i in 0..<n {
            let s = segs[i]
            if s.first_sect > s.last_sect { return .reject(.firstAfterLast) }
            if s.last_sect > 7 { return .reject(.lastSectorBeyondPage) }
            if s.gref >= dataPages { return .reject(.grefOutOfRange) }
            if blockSectors > 1,
                UInt64(s.first_sect) % blockSectors != 0 || (UInt64(s.last_sect) + 1) % blockSectors != 0
            {
                return .reject(.misalignedSegment)
            }
            dataSectors += UInt64(s.last_sect - s.first_sect) + 1
        }
        if blockSectors > 1, dataSectors > 0, sector % blockSectors != 0 {
            return .reject(.misalignedRange)
        }
        if readOnly, op != .read, op == .write || dataSectors > 0 { return .reject(.readOnly) }
        if dataSectors > 0 {
            let (end, overflow) = sector.addingReportingOverflow(dataSectors)
            if overflow { return .reject(.rangeWraps) }
            if end > sectors { return .reject(.rangeBeyondEnd) }
        }
        return .accept(Accepted(operation: op, dataSectors: dataSectors, discardSectors: 0))
    }

    private func validateDiscard(_ r: clibaio_blkif_request) -> Outcome {
        if readOnly { return .reject(.readOnly) }
        let count = withUnsafePointer(to: r) { clibaio_blkif_discard_sectors($0) }
        if count == 0 {
            return .accept(Accepted(operation: .discard, dataSectors: 0, discardSectors: 0))
        }
        if blockSectors > 1, r.sector_number % blockSectors != 0 || count % blockSectors != 0 {
            return .reject(.misalignedRange)
        }
        let (end, overflow) = r.sector_number.addingReportingOverflow(count)
        if overflow { return .reject(.rangeWraps) }
        if end > sectors { return .reject(.rangeBeyondEnd) }
        return .accept(Accepted(operation: .discard, dataSectors: 0, discardSectors: count))
    }
}
