import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// Every INDIRECT rule of §4.1 and §5.1 as a pure function over a slot copy and a private
/// "data page" area standing in for the shared memory.
@Suite struct IndirectValidatorTests {
    static let dataPages = 16
    let v = RequestValidator(
        dataPages: UInt32(dataPages), sectors: 4096, blockSectors: 1, readOnly: false, discardSupported: true)

    /// Data pages for the descriptors, and the private copy the validator fills.
    final class Memory {
        let data = UnsafeMutableRawPointer.allocate(byteCount: dataPages * 4096, alignment: 4096)
        let copy = UnsafeMutablePointer<clibaio_blkif_segment>.allocate(capacity: RingLayout.maxIndirectSegments)
        init() {
            data.initializeMemory(as: UInt8.self, repeating: 0, count: dataPages * 4096)
            copy.initialize(repeating: clibaio_blkif_segment(), count: RingLayout.maxIndirectSegments)
        }
        deinit {
            data.deallocate()
            copy.deallocate()
        }
        func page(_ i: Int) -> UnsafeMutableRawPointer { data + i * 4096 }
    }

    func indirect(
        op: UInt8 = 1, sector: UInt64 = 0, nr: UInt16? = nil, grefs: [UInt32] = [3], segments: [BlkifSegment],
        in m: Memory, descriptorPage: Int = 3
    ) -> clibaio_blkif_request {
        BlkifRequest.writeDescriptors(segments, to: m.page(descriptorPage))
        return BlkifRequest.indirect(
            indirectOperation: op, id: 7, sector: sector, nrSegments: nr ?? UInt16(segments.count),
            indirectGrefs: grefs)
    }

    func outcome(_ r: clibaio_blkif_request, _ m: Memory, _ validator: RequestValidator? = nil)
        -> RequestValidator.Outcome
    {
        (validator ?? v).validateIndirect(r, dataBase: m.data, descriptors: m.copy)
    }

    func full(_ n: Int) -> [BlkifSegment] { (0..<n).map { BlkifSegment(gref: UInt32($0 % 16)) } }

    @Test func slotLayoutAndResponseOperation() {
        let r = BlkifRequest.indirect(
            indirectOperation: 0, id: 0x1122, sector: 99, nrSegments: 300, indirectGrefs: [5, 6, 7, 8, 9, 10, 11, 12])
        let bytes = withUnsafeBytes(of: r) { Array($0) }
        #expect(bytes[0] == 6 && bytes[1] == 0 && bytes[2] == 44 && bytes[3] == 1)  // 300 = 0x012C
        #expect(bytes[28] == 5 && bytes[56] == 12)
        #expect(RequestValidator.indirectSegmentCount(r) == 300)
        #expect(RequestValidator.indirectGref(r, 7) == 12)
        #expect(RequestValidator.indirectResponseOperation(r) == 0)
    }

    @Test func indirectOperationMustBeReadOrWrite() {
        let m = Memory()
        for op: UInt8 in [2, 3, 4, 5, 6, 7, 200, 255] {
            #expect(outcome(indirect(op: op, segments: full(1), in: m), m) == .reject(.badIndirectOperation), "\(op)")
            #expect(RequestValidator.indirectResponseOperation(indirect(op: op, segments: [], in: m)) == op)
        }
        #expect(Rejection.badIndirectOperation.status == .error)
        #expect(
            outcome(indirect(op: 0, segments: full(1), in: m), m)
                == .accept(.init(operation: .read, dataSectors: 8, discardSectors: 0)))
        #expect(
            outcome(indirect(op: 1, segments: full(1), in: m), m)
                == .accept(.init(operation: .write, dataSectors: 8, discardSectors: 0)))
    }

    @Test func segmentCountIsOneToTwoHundredFiftySix() {
        let m = Memory()
        for nr: UInt16 in [0, 257, 512, 513, 4096, .max] {
            #expect(outcome(indirect(nr: nr, segments: full(256), in: m), m) == .reject(.badSegmentCount), "\(nr)")
        }
        for n in [1, 11, 12, 255, 256] {
            #expect(
                outcome(indirect(segments: full(n), in: m), m)
                    == .accept(.init(operation: .write, dataSectors: UInt64(n * 8), discardSectors: 0)), "\(n)")
        }
    }

    @Test func indirectPagesMustBeDataPages() {
        let m = Memory()
        #expect(outcome(indirect(grefs: [16], segments: full(1), in: m), m) == .reject(.indirectGrefOutOfRange))
        #expect(outcome(indirect(grefs: [.max], segments: full(256), in: m), m) == .reject(.indirectGrefOutOfRange))
        #expect(outcome(indirect(grefs: [], segments: full(1), in: m), m) != .reject(.indirectGrefOutOfRange))
        // Only ceil(256 / 512) = 1 page is used: later grefs are ignored, whatever they hold.
        #expect(
            outcome(indirect(grefs: [3, .max, 99, 16, 17, 18, 19, .max], segments: full(256), in: m), m)
                == .accept(.init(operation: .write, dataSectors: 2048, discardSectors: 0)))
        // The slot is checked before anything is read from shared memory: the order of rules.
        #expect(
            outcome(indirect(op: 9, nr: 0, grefs: [.max], segments: [], in: m), m) == .reject(.badIndirectOperation))
        #expect(outcome(indirect(nr: 0, grefs: [.max], segments: [], in: m), m) == .reject(.badSegmentCount))
    }

    @Test func eachDescriptorFollowsTheSegmentRules() {
        let m = Memory()
        func one(_ s: BlkifSegment, at i: Int = 200, sector: UInt64 = 0, _ validator: RequestValidator? = nil)
            -> RequestValidator.Outcome
        {
            var segs = full(256)
            segs[i] = s
            return outcome(indirect(sector: sector, segments: segs, in: m), m, validator)
        }
        #expect(one(BlkifSegment(gref: 0, firstSector: 5, lastSector: 4)) == .reject(.firstAfterLast))
        #expect(one(BlkifSegment(gref: 0, firstSector: 0, lastSector: 8)) == .reject(.lastSectorBeyondPage))
        #expect(one(BlkifSegment(gref: 0, firstSector: 9, lastSector: 255)) == .reject(.lastSectorBeyondPage))
        #expect(one(BlkifSegment(gref: 16), at: 255) == .reject(.grefOutOfRange))
        #expect(one(BlkifSegment(gref: .max), at: 0) == .reject(.grefOutOfRange))
        // Partial pages are fine and count exactly their sectors.
        #expect(
            one(BlkifSegment(gref: 1, firstSector: 2, lastSector: 4))
                == .accept(.init(operation: .write, dataSectors: 255 * 8 + 3, discardSectors: 0)))
        // Range: 256 full segments = 2048 sectors on a 4096-sector disk.
        #expect(outcome(indirect(sector: 2048, segments: full(256), in: m), m) != .reject(.rangeBeyondEnd))
        #expect(outcome(indirect(sector: 2049, segments: full(256), in: m), m) == .reject(.rangeBeyondEnd))
        #expect(outcome(indirect(sector: .max - 100, segments: full(256), in: m), m) == .reject(.rangeWraps))
        // Descriptors past nr_segments are never looked at.
        var segs = full(3)
        segs.append(BlkifSegment(gref: .max, firstSector: 7, lastSector: 1))
        #expect(
            outcome(indirect(nr: 3, segments: segs, in: m), m)
                == .accept(.init(operation: .write, dataSectors: 24, discardSectors: 0)))
    }

    @Test func logicalBlockAlignmentAndReadOnly() {
        let m = Memory()
        let v4k = RequestValidator(
            dataPages: 16, sectors: 4096, blockSectors: 8, readOnly: false, discardSupported: true)
        var segs = full(20)
        #expect(outcome(indirect(segments: segs, in: m), m, v4k) != .reject(.misalignedSegment))
        #expect(outcome(indirect(sector: 4, segments: segs, in: m), m, v4k) == .reject(.misalignedRange))
        segs[19] = BlkifSegment(gref: 0, firstSector: 0, lastSector: 3)
        #expect(outcome(indirect(segments: segs, in: m), m, v4k) == .reject(.misalignedSegment))
        let ro = RequestValidator(dataPages: 16, sectors: 4096, blockSectors: 1, readOnly: true, discardSupported: true)
        #expect(outcome(indirect(op: 1, segments: full(256), in: m), m, ro) == .reject(.readOnly))
        #expect(
            outcome(indirect(op: 0, segments: full(256), in: m), m, ro)
                == .accept(.init(operation: .read, dataSectors: 2048, discardSectors: 0)))
    }

    /// The descriptors are copied once: what was validated is the private copy, and rewriting the
    /// page afterwards (a hostile frontend racing the daemon) changes nothing the daemon uses.
    @Test func descriptorsAreCopiedOnceAndOnlyTheCopyCounts() {
        let m = Memory()
        let segs = (0..<256).map { BlkifSegment(gref: UInt32($0 % 16), firstSector: UInt8($0 % 4), lastSector: 7) }
        let r = indirect(segments: segs, in: m)
        guard case .accept = outcome(r, m) else {
            Issue.record("valid request rejected")
            return
        }
        // The frontend rewrites every descriptor to point far outside the data pages.
        BlkifRequest.writeDescriptors(
            Array(repeating: BlkifSegment(gref: .max, firstSector: 0, lastSector: 255), count: 256), to: m.page(3))
        for i in 0..<256 {
            #expect(m.copy[i].gref == segs[i].gref && m.copy[i].first_sect == segs[i].firstSector)
            #expect(m.copy[i].last_sect == 7)
        }
        // And a rejected rewrite is judged on its own copy.
        #expect(outcome(r, m) == .reject(.lastSectorBeyondPage))
    }
}
