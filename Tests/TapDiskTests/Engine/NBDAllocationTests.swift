import CLibAIO
import Glibc
import Testing

@testable import TapDisk

extension AllocationTests {
    /// The NBD front: allocations per 4 KiB request once warm, QD1 and QD8, simple and
    /// structured replies. Slots, receive buffers, output queues and the data pool are all
    /// allocated when the transmission is created.
    @Test(arguments: [(false, 1, false), (false, 8, false), (true, 1, false), (true, 8, false), (false, 8, true)])
    func nbdSteadyStateAllocationsPerRequest(write: Bool, depth: Int, structured: Bool) throws {
        try #require(mallocCounterActive, "the malloc counter is not interposed")
        let rig = try NBDRig(imageBytes: Self.imageBytes, structured: structured)
        let blocks = UInt64(Self.imageBytes / 4096)
        var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
        let replyBytes = write ? 16 : (structured ? 28 : 16) + 4096
        for _ in 0..<(2000 / depth) {
            try #require(rig.batch(write: true, depth: depth, blocks: blocks, rng: &rng, replyBytes: 16))
        }
        for _ in 0..<(2000 / depth) {
            try #require(rig.batch(write: write, depth: depth, blocks: blocks, rng: &rng, replyBytes: replyBytes))
        }
        let batches = Self.measuredRequests / depth
        var ok = true
        let allocations = countAllocations {
            for _ in 0..<batches where ok {
                ok = rig.batch(write: write, depth: depth, blocks: blocks, rng: &rng, replyBytes: replyBytes)
            }
        }
        #expect(ok, "a batch did not get all its replies")
        let requests = batches * depth
        print(
            "allocations-per-request nbd \(write ? "write" : "read") qd\(depth)\(structured ? " structured" : ""): \(allocations) / \(requests)"
        )
        #expect(allocations == 0, "\(allocations) heap allocations in \(requests) steady-state NBD requests")
    }
}
