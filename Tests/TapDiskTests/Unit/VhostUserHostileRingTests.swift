import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// Random descriptor tables, indirect tables and avail entries, as a hostile guest would write
/// them: whatever `pop` returns must stay inside guest memory and the caller's storage, every
/// head taken gets exactly one used entry, and the walk always ends.
@Suite struct VhostUserHostileRingTests {
    typealias Ring = VhostUserTestRing

    @Test(arguments: [1, 2, 3, 4] as [UInt64]) func randomRingsNeverEscape(seed: UInt64) throws {
        var rng = SplitMix(seed: seed)
        var ring = try Ring(size: 16)
        var q = try ring.queue(maxChainBytes: 1 << 16)
        let capacity = 6
        let iov = IovecStorage(capacity)
        let low = UInt(bitPattern: ring.host(Ring.base))
        let high = low + UInt(Ring.bytes)
        var taken = 0
        var counts: [String: Int] = [:]
        for _ in 0..<3000 {
            for i in 0..<16 {
                ring.setDescriptor(
                    i, address: Ring.hostileAddress(&rng), length: Ring.hostileLength(&rng),
                    flags: UInt16(rng.next() % 8),
                    next: UInt16(rng.next() % 18))
            }
            for i in 0..<8 {
                ring.setDescriptor(
                    i, address: Ring.hostileAddress(&rng), length: Ring.hostileLength(&rng),
                    flags: UInt16(rng.next() % 8),
                    next: UInt16(rng.next() % 10), table: Ring.indirect(0))
            }
            ring.writeHeader(at: Ring.data(0), type: UInt32(rng.next() % 16), sector: rng.next())
            let head = UInt16(rng.next() % 17)  // 16 is out of range
            ring.publish(head)
            let before = ring.usedIndex
            switch q.pop(into: iov.buffer, memory: ring.memory) {
            case .empty:
                Issue.record("a published entry was not taken")
            case .broken(let fault):
                #expect(fault == .headOutOfRange(16) && head == 16)
                counts["broken", default: 0] += 1
                q = try ring.queue(lastAvailableIndex: ring.availableIndex, maxChainBytes: 1 << 16)
                continue
            case .malformed(let h, let error, let status):
                #expect(h == head)
                if let status { #expect((low..<high).contains(UInt(bitPattern: status))) }
                counts["\(error)".prefix { $0 != "(" }.description, default: 0] += 1
            case .chain(let c):
                #expect(c.head == head && c.segmentCount <= capacity)
                #expect(c.readableBytes + c.writableBytes + 17 <= 1 << 16)
                #expect((low..<high).contains(UInt(bitPattern: c.status)))
                var sum: UInt64 = 0
                for i in 0..<c.segmentCount {
                    let base = UInt(bitPattern: iov.buffer[i].iov_base)
                    #expect(base >= low && base + UInt(iov.buffer[i].iov_len) <= high)
                    sum += UInt64(iov.buffer[i].iov_len)
                }
                #expect(sum == c.readableBytes + c.writableBytes)
                _ = VirtioBlkRequest.classify(
                    c, storage: iov.buffer,
                    disk: VirtioBlkDisk(
                        capacitySectors: 1 << 20, blockSize: 512, readOnly: false, discard: true,
                        maxDiscardSectors: 1 << 16, maxWriteZeroesSectors: 1 << 16))
                counts["chain", default: 0] += 1
            }
            taken += 1
            #expect(q.complete(head: head, writtenBytes: 0) == true)
            #expect(ring.usedIndex == before &+ 1 && ring.usedElement(Int(before)).id == UInt32(head))
        }
        print("hostile ring seed \(seed): \(counts.sorted { $0.key < $1.key })")
        #expect(taken > 2500 && q.inFlight == 0)
        // The generator reaches the interesting outcomes, including valid chains.
        #expect(counts["chain", default: 0] > 0 && counts["chainTooLong", default: 0] > 0)
        #expect(counts["addressOutOfRange", default: 0] > 0 && counts["indirectBadLength", default: 0] > 0)
    }
}
