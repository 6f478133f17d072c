import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// The inflight region's protocol (`InflightQueue`) against a ring in a memfd: a back-end that
/// dies at every step of answering a batch, and the next back-end's recovery over the same
/// guest memory and region. What must hold after any interruption: every head the guest posted
/// is either published in the used ring or resubmitted, never both, and resubmissions come in
/// pop order.
@Suite struct VhostUserInflightTests {
    typealias Ring = VhostUserTestRing

    /// A ring of 32 with `count` valid requests whose heads are 3·i, published in `order`.
    private func makeRing(requests count: Int, order: [Int]) throws -> Ring {
        var ring = try Ring(size: 32)
        for i in 0..<count {
            ring.request(first: 3 * i, type: VirtioBlkType.write, sector: UInt64(8 * i), dataLength: 512)
        }
        for i in order { ring.publish(UInt16(3 * i)) }
        return ring
    }

    private func region() throws -> InflightRegion {
        try InflightRegion.create(queueCount: 1, queueSize: 32, maxQueueSize: 1024)
    }

    /// Pops everything available and returns the heads in pop order.
    private func popAll(_ q: inout SplitVirtqueue, _ ring: borrowing Ring) -> [UInt16] {
        let iov = IovecStorage(4)
        var heads: [UInt16] = []
        while let c = q.pop(into: iov.buffer, memory: ring.memory).chain { heads.append(c.head) }
        return heads
    }

    @Test func regionLayoutMatchesTheSpec() throws {
        #expect(MemoryLayout<clibaio_inflight_desc_split>.size == 16)
        #expect(MemoryLayout<clibaio_vhost_inflight>.size == 24)
        #expect(InflightQueue.regionBytes(queueSize: 128) == 16 + 16 * 128 + 48)
        let r = try region()
        let q = r.queue(0)
        #expect(q.descriptorCount == 32 && q.base.load(fromByteOffset: 8, as: UInt16.self) == 1)
        var size: UInt64 = 0
        #expect(clibaio_fd_size(r.descriptor.rawValue, &size) == 0 && size == UInt64(r.description.mmapSize))
        let seals = clibaio_get_seals(r.descriptor.rawValue)
        #expect(seals & clibaio_F_SEAL_SHRINK != 0 && seals & clibaio_F_SEAL_GROW != 0)
    }

    /// Where the old back-end stops while answering a batch.
    enum Cut: CustomStringConvertible {
        /// After staging `k` of the batch's used elements (used->idx not yet stored).
        case staged(Int)
        /// After the used->idx store and `k` of the clears (used_idx not yet stored).
        case published(cleared: Int)
        /// After the whole settle.
        case settled
        var description: String {
            switch self {
            case .staged(let k): "staged \(k)"
            case .published(let k): "published, \(k) cleared"
            case .settled: "settled"
            }
        }
    }

    // A batch of 4 answers (out of pop order) interrupted at each step; 6 requests taken.
    @Test(arguments: [
        Cut.staged(0), .staged(1), .staged(3), .staged(4), .published(cleared: 0), .published(cleared: 1),
        .published(cleared: 3), .published(cleared: 4), .settled,
    ])
    func aBatchInterruptedAtAnyStepIsRecoveredExactly(cut: Cut) throws {
        var ring = try makeRing(requests: 8, order: [5, 0, 3, 1, 4, 2])
        let r = try region()
        var q = try ring.queue(inflight: r.queue(0))
        let popped = popAll(&q, ring)
        #expect(popped == [15, 0, 9, 3, 12, 6])
        let batch: [UInt16] = [9, 15, 6, 3]
        var published = false
        switch cut {
        case .staged(let k):
            for h in batch.prefix(k) {
                do {
                    let ok = q.stageUsed(head: h, writtenBytes: 1)
                    #expect(ok)
                }
            }
        case .published(let k):
            for h in batch {
                do {
                    let ok = q.stageUsed(head: h, writtenBytes: 1)
                    #expect(ok)
                }
            }
            // The used->idx store, then k clears as `settle` makes them (newest staged first).
            ring.setUsedIndex(UInt16(batch.count))
            for h in batch.reversed().prefix(k) {
                r.queue(0).base.storeBytes(of: 0, toByteOffset: 16 + 16 * Int(h), as: UInt8.self)
            }
            published = true
        case .settled:
            for h in batch {
                do {
                    let ok = q.stageUsed(head: h, writtenBytes: 1)
                    #expect(ok)
                }
            }
            q.publishUsed()
            published = true
        }
        _ = consume q

        // The next back-end: same guest memory, same region; QEMU sets last_avail to used->idx.
        var next = try ring.queue(lastAvailableIndex: ring.usedIndex, inflight: r.queue(0))
        let usedCount = Int(ring.usedIndex)
        #expect(usedCount == (published ? batch.count : 0), "\(cut)")
        let answered = (0..<usedCount).map { UInt16(ring.usedElement($0).id) }
        let expected = published ? popped.filter { !batch.contains($0) } : popped
        #expect(next.pendingResubmissions == expected.count, "\(cut)")
        #expect(r.queue(0).usedIndex == ring.usedIndex, "\(cut): used_idx not settled")
        // Two more requests posted after the restart come after the resubmissions.
        ring.publish(21)
        ring.publish(18)
        let again = popAll(&next, ring)
        #expect(again == expected + [21, 18], "\(cut)")
        #expect(Set(answered).isDisjoint(with: Set(again)), "\(cut): a head answered and resubmitted")
        #expect(next.lastAvailableIndex == 8, "\(cut)")
        // Everything answered now, in one batch of 8 (or 6): each head exactly once overall.
        for h in again {
            do {
                let ok = next.stageUsed(head: h, writtenBytes: 1)
                #expect(ok)
            }
        }
        next.publishUsed()
        let all = (0..<Int(ring.usedIndex)).map { UInt16(ring.usedElement($0).id) }
        #expect(all.count == 8 && Set(all) == Set(popped + [21, 18]), "\(cut): \(all)")
        for h in 0..<32 { #expect(!r.queue(0).isInflight(h), "\(cut): head \(h) still inflight") }
    }

    // What libvhost-user and SPDK do (clear only last_batch_head) would resubmit 3 heads of a
    // published batch of 4: the check above that answered and resubmitted heads are disjoint is
    // what catches it. This shows the check can fail.
    @Test func clearingOnlyTheLastBatchHeadWouldResubmitPublishedHeads() throws {
        let ring = try makeRing(requests: 4, order: [0, 1, 2, 3])
        let r = try region()
        var q = try ring.queue(inflight: r.queue(0))
        _ = popAll(&q, ring)
        for h: UInt16 in [0, 3, 6, 9] {
            do {
                let ok = q.stageUsed(head: h, writtenBytes: 1)
                #expect(ok)
            }
        }
        ring.setUsedIndex(4)
        let region = r.queue(0)
        region.base.storeBytes(of: 0, toByteOffset: 16 + 16 * Int(region.lastBatchHead), as: UInt8.self)
        region.base.storeBytes(of: UInt16(4), toByteOffset: 14, as: UInt16.self)
        let next = try ring.queue(lastAvailableIndex: 4, inflight: r.queue(0))
        #expect(next.pendingResubmissions == 3)
    }

    // A back-end killed between reading an avail entry and marking it: the region does not
    // know the head, so the avail ring hands it out again (last_avail = used->idx + inflight).
    @Test func aHeadTakenButNotMarkedComesBackFromTheAvailRing() throws {
        var ring = try makeRing(requests: 3, order: [0, 1, 2])
        let r = try region()
        var q = try ring.queue(inflight: r.queue(0))
        #expect(popAll(&q, ring) == [0, 3, 6])
        do {
            let ok = q.complete(head: 0, writtenBytes: 1)
            #expect(ok)
        }
        r.queue(0).base.storeBytes(of: 0, toByteOffset: 16 + 16 * 6, as: UInt8.self)
        _ = consume q
        var next = try ring.queue(lastAvailableIndex: 1, inflight: r.queue(0))
        #expect(next.lastAvailableIndex == 2)
        #expect(popAll(&next, ring) == [3, 6])
    }

    // A fresh region on a ring whose used->idx is not 0 (a ring that ran before the region was
    // made): nothing to resubmit, the avail ring resumes at used->idx.
    @Test func aFreshRegionResubmitsNothing() throws {
        var ring = try makeRing(requests: 2, order: [])
        ring.setAvailableIndex(40)
        ring.setUsedIndex(40)
        let r = try region()
        var q = try ring.queue(lastAvailableIndex: 40, inflight: r.queue(0))
        #expect(q.pendingResubmissions == 0 && q.lastAvailableIndex == 40)
        ring.publish(3)
        #expect(popAll(&q, ring) == [3])
        do {
            let ok = q.complete(head: 3, writtenBytes: 1)
            #expect(ok)
        }
        #expect(r.queue(0).usedIndex == 41 && !r.queue(0).isInflight(3))
    }

    // A region made for another queue size is refused rather than misread.
    @Test func aRegionOfAnotherSizeIsRefused() throws {
        let ring = try makeRing(requests: 1, order: [])
        let r = try InflightRegion.create(queueCount: 1, queueSize: 64, maxQueueSize: 1024)
        #expect(throws: VirtqueueSetupError.inflightSizeMismatch(region: 64, queue: 32)) {
            _ = try ring.queue(inflight: r.queue(0))
        }
    }
}
