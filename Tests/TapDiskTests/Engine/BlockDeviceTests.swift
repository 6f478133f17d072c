import Foundation
import Glibc
import Testing

@testable import TapDisk

/// A block device image: a loop device over a file, served through the ring like a real LV.
@Suite(.serialized) struct BlockDeviceTests {
    @Test(.enabled(if: LoopFilesystem.isRoot)) func loopDeviceRoundTripAndDiscard() throws {
        let backing = try EngineHarness.makeTemporaryImage(bytes: 8 << 20)
        defer { unlink(backing) }
        let device = try Shell.check(["losetup", "--find", "--show", backing]).trimmingCharacters(
            in: .whitespacesAndNewlines)
        defer { _ = try? Shell.run(["losetup", "-d", device]) }
        let h = try EngineHarness(imagePath: device, cache: .none)
        let g = h.engine.image.geometry
        #expect(g.isBlockDevice)
        #expect(g.sectors == 16384)
        #expect(g.sectorSize == 512)
        #expect(g.physicalSectorSize >= 512)
        #expect(h.engine.image.filesystemSpace() == nil)
        h.fill(gref: 0, pages: 3, seed: 77)
        h.submit([BlkifRequest.write(id: 1, sector: 64, segments: (0..<3).map { BlkifSegment(gref: UInt32($0)) })])
        #expect(h.run(untilResponses: 1))
        #expect(h.status(of: 1) == 0)
        var expected: [UInt8] = []
        for p in 0..<3 { expected += Array(UnsafeRawBufferPointer(start: h.frontend.page(UInt32(p)), count: 4096)) }
        h.submit([BlkifRequest.flush(id: 2)])
        #expect(h.run(untilResponses: 2))
        #expect(h.status(of: 2) == 0)
        #expect(h.readImage(offset: 64 * 512, count: 3 * 4096) == expected)
        // A loop device advertises write_zeroes, so DISCARD is supported and must zero exactly.
        #expect(g.discard)
        do {
            h.submit([BlkifRequest.discard(id: 3, sector: 64 + 8, sectors: 8)])
            #expect(h.run(untilResponses: 3))
            #expect(h.status(of: 3) == 0)
            let after = h.readImage(offset: 64 * 512, count: 3 * 4096)
            #expect(Array(after[0..<4096]) == Array(expected[0..<4096]))
            #expect(after[4096..<8192].allSatisfy { $0 == 0 })
            #expect(Array(after[8192...]) == Array(expected[8192...]))
        }
    }
}

extension BlockDeviceTests {
    /// A 4096-byte logical sector device: `sector-size` is 4096 and §5.1's alignment rules hold
    /// (a misaligned segment or range is ERROR without I/O; aligned I/O works under O_DIRECT).
    @Test(.enabled(if: LoopFilesystem.isRoot)) func fourKiBLogicalSectors() throws {
        let backing = try EngineHarness.makeTemporaryImage(bytes: 8 << 20)
        defer { unlink(backing) }
        let device = try Shell.check(["losetup", "--sector-size", "4096", "--find", "--show", backing])
            .trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? Shell.run(["losetup", "-d", device]) }
        let h = try EngineHarness(imagePath: device, cache: .none)
        #expect(h.engine.image.geometry.sectorSize == 4096)
        #expect(h.engine.image.geometry.sectors == 16384)
        h.fill(gref: 0, pages: 2, seed: 9)
        h.submit([
            BlkifRequest.write(id: 1, sector: 8, segments: [BlkifSegment(gref: 0), BlkifSegment(gref: 1)]),
            BlkifRequest.write(id: 2, sector: 4, segments: [BlkifSegment(gref: 0)]),
            BlkifRequest.write(id: 3, sector: 8, segments: [BlkifSegment(gref: 0, firstSector: 0, lastSector: 3)]),
            BlkifRequest.discard(id: 4, sector: 8, sectors: 4),
        ])
        #expect(h.run(untilResponses: 4))
        #expect(h.status(of: 1) == 0)
        #expect(h.status(of: 2) == -1 && h.status(of: 3) == -1 && h.status(of: 4) == -1)
        #expect(h.engine.counters.rejections[.misalignedRange] == 2)
        #expect(h.engine.counters.rejections[.misalignedSegment] == 1)
        var expected: [UInt8] = []
        for p in 0..<2 { expected += Array(UnsafeRawBufferPointer(start: h.frontend.page(UInt32(p)), count: 4096)) }
        #expect(h.readImage(offset: 8 * 512, count: 8192) == expected)
    }
}
