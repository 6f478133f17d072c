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
