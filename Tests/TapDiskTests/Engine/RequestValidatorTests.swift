import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// Every §5.1 rule, first as a pure function, then end to end through a ring (answered, counted,
/// nothing written).
@Suite struct RequestValidatorTests {
    let v = RequestValidator(dataPages: 16, sectors: 1000, blockSectors: 1, readOnly: false, discardSupported: true)
    let seg = BlkifSegment(gref: 0)

    func reject(_ r: clibaio_blkif_request, _ validator: RequestValidator? = nil) -> Rejection? {
        if case .reject(let why) = (validator ?? v).validate(r) { return why }
        return nil
    }

    @Test func unsupportedOperations() {
        // 6 (INDIRECT) is served now: IndirectValidatorTests.
        for op: UInt8 in [4, 7, 8, 200, 255] {
            #expect(
                reject(BlkifRequest.make(operation: op, id: 1, sector: 0, segments: [seg])) == .unsupportedOperation)
        }
        #expect(reject(BlkifRequest.discard(id: 1, sector: 0, sectors: 8, secure: true)) == .secureDiscard)
        let noDiscard = RequestValidator(
            dataPages: 16, sectors: 1000, blockSectors: 1, readOnly: false, discardSupported: false)
        #expect(reject(BlkifRequest.discard(id: 1, sector: 0, sectors: 8), noDiscard) == .unsupportedOperation)
        #expect(Rejection.unsupportedOperation.status == .notSupported)
        #expect(Rejection.secureDiscard.status == .notSupported)
    }

    @Test func segmentCounts() {
        #expect(reject(BlkifRequest.make(operation: 0, id: 1, sector: 0, nrSegments: 0)) == .badSegmentCount)
        #expect(
            reject(BlkifRequest.make(operation: 1, id: 1, sector: 0, segments: [seg], nrSegments: 12))
                == .badSegmentCount)
        #expect(
            reject(BlkifRequest.make(operation: 1, id: 1, sector: 0, segments: [seg], nrSegments: 255))
                == .badSegmentCount)
        #expect(
            reject(BlkifRequest.make(operation: 3, id: 1, sector: 0, segments: [seg], nrSegments: 12))
                == .badSegmentCount)
        #expect(
            reject(BlkifRequest.make(operation: 2, id: 1, sector: 0, segments: [seg], nrSegments: 12))
                == .badSegmentCount)
        #expect(reject(BlkifRequest.flush(id: 1)) == nil)
        #expect(reject(BlkifRequest.barrier(id: 1)) == nil)
        #expect(reject(BlkifRequest.read(id: 1, sector: 0, segments: Array(repeating: seg, count: 11))) == nil)
    }

    @Test func segmentBounds() {
        #expect(
            reject(
                BlkifRequest.read(id: 1, sector: 0, segments: [BlkifSegment(gref: 0, firstSector: 5, lastSector: 4)]))
                == .firstAfterLast)
        #expect(
            reject(
                BlkifRequest.read(id: 1, sector: 0, segments: [BlkifSegment(gref: 0, firstSector: 0, lastSector: 8)]))
                == .lastSectorBeyondPage)
        #expect(
            reject(
                BlkifRequest.read(id: 1, sector: 0, segments: [BlkifSegment(gref: 0, firstSector: 9, lastSector: 200)]))
                == .lastSectorBeyondPage)
        #expect(reject(BlkifRequest.read(id: 1, sector: 0, segments: [BlkifSegment(gref: 16)])) == .grefOutOfRange)
        #expect(
            reject(BlkifRequest.read(id: 1, sector: 0, segments: [seg, BlkifSegment(gref: .max)])) == .grefOutOfRange)
        // Segments past nr_segments are ignored even when garbage.
        var r = BlkifRequest.read(
            id: 1, sector: 0, segments: [seg, BlkifSegment(gref: .max, firstSector: 9, lastSector: 1)])
        r.nr_segments = 1
        #expect(reject(r) == nil)
        // First failing rule wins, in the protocol's order.
        #expect(
            reject(
                BlkifRequest.read(id: 1, sector: 0, segments: [BlkifSegment(gref: 99, firstSector: 3, lastSector: 2)]))
                == .firstAfterLast)
    }

    @Test func logicalBlockAlignment() {
        let v4k = RequestValidator(
            dataPages: 16, sectors: 1000, blockSectors: 8, readOnly: false, discardSupported: true)
        #expect(
            reject(
                BlkifRequest.read(id: 1, sector: 0, segments: [BlkifSegment(gref: 0, firstSector: 1, lastSector: 7)]),
                v4k) == .misalignedSegment)
        #expect(
            reject(
                BlkifRequest.read(id: 1, sector: 0, segments: [BlkifSegment(gref: 0, firstSector: 0, lastSector: 6)]),
                v4k) == .misalignedSegment)
        #expect(reject(BlkifRequest.read(id: 1, sector: 4, segments: [seg]), v4k) == .misalignedRange)
        #expect(reject(BlkifRequest.discard(id: 1, sector: 4, sectors: 8), v4k) == .misalignedRange)
        #expect(reject(BlkifRequest.discard(id: 1, sector: 8, sectors: 4), v4k) == .misalignedRange)
        #expect(reject(BlkifRequest.read(id: 1, sector: 8, segments: [seg]), v4k) == nil)
    }

    @Test func readOnlyDisk() {
        let ro = RequestValidator(dataPages: 16, sectors: 1000, blockSectors: 1, readOnly: true, discardSupported: true)
        #expect(reject(BlkifRequest.write(id: 1, sector: 0, segments: [seg]), ro) == .readOnly)
        #expect(reject(BlkifRequest.flush(id: 1, segments: [seg]), ro) == .readOnly)
        #expect(reject(BlkifRequest.barrier(id: 1, segments: [seg]), ro) == .readOnly)
        #expect(reject(BlkifRequest.discard(id: 1, sector: 0, sectors: 8), ro) == .readOnly)
        #expect(reject(BlkifRequest.discard(id: 1, sector: 0, sectors: 0), ro) == .readOnly)
        #expect(reject(BlkifRequest.flush(id: 1), ro) == nil)
        #expect(reject(BlkifRequest.barrier(id: 1), ro) == nil)
        #expect(reject(BlkifRequest.read(id: 1, sector: 0, segments: [seg]), ro) == nil)
    }

    @Test func ranges() {
        #expect(reject(BlkifRequest.read(id: 1, sector: 992, segments: [seg])) == nil)
        #expect(reject(BlkifRequest.read(id: 1, sector: 993, segments: [seg])) == .rangeBeyondEnd)
        #expect(reject(BlkifRequest.read(id: 1, sector: .max - 3, segments: [seg])) == .rangeWraps)
        #expect(reject(BlkifRequest.discard(id: 1, sector: .max, sectors: 2)) == .rangeWraps)
        #expect(reject(BlkifRequest.discard(id: 1, sector: 999, sectors: 2)) == .rangeBeyondEnd)
        // A zero-length discard is an OKAY no-op wherever it points; empty flushes ignore sector.
        #expect(reject(BlkifRequest.discard(id: 1, sector: .max, sectors: 0)) == nil)
        #expect(reject(BlkifRequest.flush(id: 1, sector: .max)) == nil)
        #expect(reject(BlkifRequest.barrier(id: 1, sector: .max)) == nil)
        #expect(reject(BlkifRequest.flush(id: 1, sector: 996, segments: [seg])) == .rangeBeyondEnd)
    }

    /// End to end: each invalid request is answered with the right status, counted by reason, and
    /// nothing reaches the image.
    @Test func invalidRequestsAreAnsweredWithoutIO() throws {
        let h = try EngineHarness(imageBytes: 1 << 20, dataPages: 16)
        h.fill(gref: 0, seed: 42)
        let bad: [(clibaio_blkif_request, Int16)] = [
            (BlkifRequest.make(operation: 9, id: 1, sector: 0, segments: [seg]), -2),
            // INDIRECT with indirect_op WRITE (byte 1) and nr_segments (u16 @2) 0.
            (BlkifRequest.make(operation: 6, id: 2, sector: 0, segments: [seg]), -1),
            (BlkifRequest.discard(id: 3, sector: 0, sectors: 8, secure: true), -2),
            (BlkifRequest.make(operation: 1, id: 4, sector: 0, nrSegments: 0), -1),
            (BlkifRequest.make(operation: 1, id: 5, sector: 0, segments: [seg], nrSegments: 12), -1),
            (
                BlkifRequest.write(id: 6, sector: 0, segments: [BlkifSegment(gref: 0, firstSector: 3, lastSector: 1)]),
                -1
            ),
            (
                BlkifRequest.write(id: 7, sector: 0, segments: [BlkifSegment(gref: 0, firstSector: 0, lastSector: 8)]),
                -1
            ),
            (BlkifRequest.write(id: 8, sector: 0, segments: [BlkifSegment(gref: 16)]), -1),
            (BlkifRequest.write(id: 9, sector: 2048, segments: [seg]), -1),
            (BlkifRequest.write(id: 10, sector: .max - 1, segments: [seg]), -1),
            (BlkifRequest.discard(id: 11, sector: 2040, sectors: 16), -1),
        ]
        h.submit(bad.map(\.0))
        #expect(h.run(untilResponses: bad.count))
        for (r, status) in bad {
            #expect(h.status(of: r.id) == status, "id \(r.id)")
            // INDIRECT is answered with its indirect_op (§4.1).
            #expect(h.responses(for: r.id).first?.operation == (r.operation == 6 ? r.nr_segments : r.operation))
        }
        let c = h.engine.counters
        #expect(c.unsupportedRequests == 2)
        #expect(c.invalidRequests == 9)
        #expect(c.responsesNotSupported == 2 && c.responsesError == 9)
        #expect(c.rejections[.badSegmentCount] == 3)
        #expect(c.writeErrors == 0 && c.readErrors == 0 && c.discardErrors == 0)
        #expect(c.writeBytes == 0)
        #expect(c.rejections[.grefOutOfRange] == 1 && c.rejections[.rangeBeyondEnd] == 2)
        #expect(h.engine.ioStatus == .ok)
        #expect(!h.events.contains { if case .ioError = $0 { true } else { false } })
        #expect(h.readImage(offset: 0, count: 4096).allSatisfy { $0 == 0 })
        #expect(c.invariantHolds)
    }

    @Test func readOnlyImageServesReadsAndRefusesWrites() throws {
        let path = try EngineHarness.makeTemporaryImage(bytes: 1 << 20)
        defer { unlink(path) }
        let h = try EngineHarness(imagePath: path, readOnly: true, dataPages: 16)
        h.submit([
            BlkifRequest.write(id: 1, sector: 0, segments: [seg]),
            BlkifRequest.read(id: 2, sector: 0, segments: [seg]),
            BlkifRequest.flush(id: 3),
            BlkifRequest.discard(id: 4, sector: 0, sectors: 8),
        ])
        #expect(h.run(untilResponses: 4))
        #expect(h.status(of: 1) == -1 && h.status(of: 2) == 0 && h.status(of: 3) == 0 && h.status(of: 4) == -1)
    }
}
