import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// Random descriptor tables, indirect tables and avail entries, as a hostile guest would write
/// them: whatever `pop` returns must stay inside guest memory and the caller's storage, every
/// head taken gets exactly one used entry, and the walk always ends.
@Suite struct VhostUserHostileRingTests {
    typealias Ring = VhostUserTestRing

    private static func address(_ rng: inout SplitMix) -> UInt64 {
        switch rng.next() % 8 {
        case 0: return UInt64.max - rng.next() % 64
        case 1: return rng.next() % Ring.base  // below the region
        case 2: return Ring.base + Ring.bytes - rng.next() % 64  // straddling the end
        case 3: return Ring.indirect(16 * (rng.next() % 4))  // the indirect area
        default: return Ring.data(rng.next() % 0x8_0000)
        }
    }

    private static func length(_ rng: inout SplitMix) -> UInt32 {
        switch rng.next() % 8 {
        case 0: return 0
        case 1: return 1
        case 2: return 16
        case 3: return UInt32.max - UInt32(rng.next() % 4)
        case 4: return 16 * UInt32(1 + rng.next() % 8)  // a plausible indirect table
        default: return UInt32(rng.next() % 0x4000)
        }
    }

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
                    i, address: Self.address(&rng), length: Self.length(&rng), flags: UInt16(rng.next() % 8),
                    next: UInt16(rng.next() % 18))
            }
            for i in 0..<8 {
                ring.setDescriptor(
                    i, address: Self.address(&rng), length: Self.length(&rng), flags: UInt16(rng.next() % 8),
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
