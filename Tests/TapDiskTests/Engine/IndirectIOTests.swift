import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// INDIRECT requests end to end through the daemon's own `DiskLoop`, real I/O into an image.
@Suite struct IndirectIOTests {
    /// Descriptor pages live above the data pages the tests use (0..<500).
    static let writeDescriptors: UInt32 = 510
    static let readDescriptors: UInt32 = 511

    /// `n` segments on distinct pages (stride 3 is coprime with 500), full or partial pages.
    static func segments(_ n: Int, base: Int, partial: Bool, rng: inout SplitMix) -> [BlkifSegment] {
        (0..<n).map { i in
            let first: UInt8 = partial ? UInt8(rng.next() % 4) : 0
            let last: UInt8 = partial ? UInt8(4 + rng.next() % 4) : 7
            return BlkifSegment(gref: UInt32((base + i * 3) % 500), firstSector: first, lastSector: last)
        }
    }

    /// The bytes the segments name, in order: what a write stores.
    static func bytes(_ h: EngineHarness, _ segments: [BlkifSegment]) -> [UInt8] {
        segments.flatMap { s in
            Array(
                UnsafeRawBufferPointer(
                    start: h.frontend.page(s.gref) + Int(s.firstSector) * 512, count: s.byteCount))
        }
    }

    /// Write, then read back into scrubbed pages, with 1, 11, 12, 255 and 256 segments, full and
    /// partial pages: the image and the read pages hold exactly what was written; responses carry
    /// the indirect_op; the counters count READ and WRITE.
    @Test(arguments: [CacheMode.none, .writeback])
    func roundTripsWithOddSegmentCounts(cache: CacheMode) throws {
        let h = try EngineHarness(imageBytes: 16 << 20, cache: cache, pageOrder: 2, dataPages: 512)
        var rng = SplitMix(seed: 11)
        var id: UInt64 = 0
        var sector: UInt64 = 3
        var totalBytes = 0
        for n in [1, 11, 12, 255, 256] {
            for partial in [false, true] {
                let segs = Self.segments(n, base: Int(id) * 5, partial: partial, rng: &rng)
                for s in segs { h.fill(gref: s.gref, seed: id &* 1000 &+ UInt64(s.gref)) }
                let expected = Self.bytes(h, segs)
                let before = h.responses.count
                h.submit([
                    h.frontend.indirectRequest(
                        write: true, id: id, sector: sector, segments: segs, descriptorPage: Self.writeDescriptors)
                ])
                #expect(h.run(untilResponses: before + 1))
                #expect(h.responses(for: id).map(\.status) == [0], "write n=\(n) partial=\(partial)")
                #expect(h.responses(for: id).first?.operation == 1)
                #expect(h.readImage(offset: Int(sector) * 512, count: expected.count) == expected)
                // Read it back into the same layout after scrubbing the pages.
                for s in segs { h.frontend.page(s.gref).initializeMemory(as: UInt8.self, repeating: 0xEE, count: 4096) }
                h.submit([
                    h.frontend.indirectRequest(
                        write: false, id: id + 10_000, sector: sector, segments: segs,
                        descriptorPage: Self.readDescriptors)
                ])
                #expect(h.run(untilResponses: before + 2))
                #expect(h.responses(for: id + 10_000).map(\.status) == [0], "read n=\(n) partial=\(partial)")
                #expect(h.responses(for: id + 10_000).first?.operation == 0)
                #expect(Self.bytes(h, segs) == expected, "read back n=\(n) partial=\(partial)")
                totalBytes += expected.count
                sector += UInt64(expected.count / 512) + 1
                id += 1
            }
        }
        let c = h.engine.counters
        #expect(c.writeRequests == id && c.readRequests == id)
        #expect(c.writeBytes == UInt64(totalBytes) && c.readBytes == UInt64(totalBytes))
        #expect(c.invalidRequests == 0 && c.unsupportedRequests == 0 && c.responsesOkay == 2 * id)
        #expect(c.invariantHolds && c.inFlight == 0)
    }

    /// 1 MiB in one request, with several in flight at once (QD4).
    @Test func oneMebibyteRequestsFourInFlight() throws {
        let h = try EngineHarness(imageBytes: 8 << 20, pageOrder: 0, dataPages: 1024 + 4)
        var segsOf: [[BlkifSegment]] = []
        for k in 0..<4 {
            let segs = (0..<256).map { BlkifSegment(gref: UInt32(k * 256 + $0)) }
            for s in segs { h.fill(gref: s.gref, seed: UInt64(k) << 32 | UInt64(s.gref)) }
            BlkifRequest.writeDescriptors(segs, to: h.frontend.page(UInt32(1024 + k)))
            segsOf.append(segs)
        }
        h.submit(
            (0..<4).map { k in
                BlkifRequest.indirect(
                    indirectOperation: 1, id: UInt64(k), sector: UInt64(k) * 2048, nrSegments: 256,
                    indirectGrefs: [UInt32(1024 + k)])
            })
        #expect(h.run(untilResponses: 4))
        #expect(h.responses.allSatisfy { $0.status == 0 && $0.operation == 1 })
        for k in 0..<4 {
            #expect(h.readImage(offset: k << 20, count: 1 << 20) == Self.bytes(h, segsOf[k]), "request \(k)")
        }
        #expect(h.engine.counters.writeBytes == 4 << 20)
    }

    /// Each INDIRECT rule end to end: ERROR at once with the raw indirect_op echoed, counted in
    /// invalid-requests under its rule, no I/O, no io-error event.
    @Test func invalidIndirectRequestsAreAnsweredWithoutIO() throws {
        let h = try EngineHarness(imageBytes: 1 << 20, dataPages: 64)
        for g in 0..<16 { h.fill(gref: UInt32(g), seed: UInt64(g) + 1) }
        let good = (0..<16).map { BlkifSegment(gref: UInt32($0)) }
        BlkifRequest.writeDescriptors(good, to: h.frontend.page(40))
        var bad = good
        bad[9] = BlkifSegment(gref: 64)
        BlkifRequest.writeDescriptors(bad, to: h.frontend.page(41))
        func ind(_ id: UInt64, op: UInt8 = 1, sector: UInt64 = 0, nr: UInt16 = 16, page: UInt32 = 40)
            -> clibaio_blkif_request
        {
            BlkifRequest.indirect(indirectOperation: op, id: id, sector: sector, nrSegments: nr, indirectGrefs: [page])
        }
        let requests: [(clibaio_blkif_request, Rejection)] = [
            (ind(1, op: 3), .badIndirectOperation),
            (ind(2, op: 77), .badIndirectOperation),
            (ind(3, op: 6), .badIndirectOperation),
            (ind(4, nr: 0), .badSegmentCount),
            (ind(5, nr: 257), .badSegmentCount),
            (ind(6, page: 64), .indirectGrefOutOfRange),
            (ind(7, page: .max), .indirectGrefOutOfRange),
            (ind(8, page: 41), .grefOutOfRange),
            (ind(9, sector: 2048 - 127), .rangeBeyondEnd),
        ]
        h.submit(requests.map(\.0))
        #expect(h.run(untilResponses: requests.count))
        for (r, _) in requests {
            #expect(h.responses(for: r.id).map(\.status) == [-1], "id \(r.id)")
            #expect(h.responses(for: r.id).first?.operation == r.nr_segments, "id \(r.id) echoes indirect_op")
        }
        let c = h.engine.counters
        #expect(c.invalidRequests == UInt64(requests.count) && c.responsesError == UInt64(requests.count))
        #expect(c.writeRequests == 0 && c.unsupportedRequests == 0 && c.writeErrors == 0)
        #expect(c.rejections[.badIndirectOperation] == 3 && c.rejections[.badSegmentCount] == 2)
        #expect(c.rejections[.indirectGrefOutOfRange] == 2)
        #expect(c.rejections[.grefOutOfRange] == 1 && c.rejections[.rangeBeyondEnd] == 1)
        #expect(h.readImage(offset: 0, count: 1 << 20).allSatisfy { $0 == 0 })
        #expect(!h.events.contains { if case .ioError = $0 { true } else { false } })
        #expect(h.engine.ioStatus == .ok && c.invariantHolds)
        // A valid one after them is served.
        h.submit([ind(10, sector: 8)])
        #expect(h.run(untilResponses: requests.count + 1))
        #expect(h.status(of: 10) == 0)
    }

    /// A read-only disk serves INDIRECT READ and refuses INDIRECT WRITE.
    @Test func readOnlyDisk() throws {
        let path = try EngineHarness.makeTemporaryImage(bytes: 1 << 20)
        defer { unlink(path) }
        let h = try EngineHarness(imagePath: path, readOnly: true, dataPages: 16)
        let segs = (0..<4).map { BlkifSegment(gref: UInt32($0)) }
        h.submit([
            h.frontend.indirectRequest(write: true, id: 1, sector: 0, segments: segs, descriptorPage: 8),
            h.frontend.indirectRequest(write: false, id: 2, sector: 0, segments: segs, descriptorPage: 9),
        ])
        #expect(h.run(untilResponses: 2))
        #expect(h.status(of: 1) == -1 && h.status(of: 2) == 0)
        #expect(h.engine.counters.rejections[.readOnly] == 1 && h.engine.counters.readRequests == 1)
    }
}
