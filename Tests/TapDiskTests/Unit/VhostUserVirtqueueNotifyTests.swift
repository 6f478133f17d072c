import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// Notification suppression (EVENT_IDX and the legacy flags), re-arming without losing a kick,
/// and 16-bit index wraparound of the avail and used rings.
@Suite struct VhostUserVirtqueueNotifyTests {
    typealias Ring = VhostUserTestRing
    static let N = Ring.N
    static let W = Ring.W

    @Test func eventIndexNotifyRule() throws {
        // vring_need_event over the 16-bit window (old, new].
        #expect(SplitVirtqueue.needEvent(eventIndex: 0, new: 1, old: 0))
        #expect(!SplitVirtqueue.needEvent(eventIndex: 1, new: 1, old: 0))
        #expect(SplitVirtqueue.needEvent(eventIndex: 4, new: 8, old: 2))
        #expect(!SplitVirtqueue.needEvent(eventIndex: 8, new: 8, old: 2))
        #expect(!SplitVirtqueue.needEvent(eventIndex: 1, new: 8, old: 2))
        #expect(SplitVirtqueue.needEvent(eventIndex: 65535, new: 1, old: 65534))
        #expect(!SplitVirtqueue.needEvent(eventIndex: 3, new: 3, old: 3))

        var ring = try Ring(size: 8)
        var q = try ring.queue()
        let iov = IovecStorage(4)
        for head in [0, 3] {
            ring.request(first: head, type: VirtioBlkType.read)
            ring.publish(UInt16(head))
        }
        _ = q.pop(into: iov.buffer, memory: ring.memory)
        _ = q.pop(into: iov.buffer, memory: ring.memory)
        #expect(ring.availEvent == 2)  // we asked to be kicked at avail idx 2
        q.complete(head: 0, writtenBytes: 1)
        ring.setUsedEvent(5)
        #expect(q.shouldNotify() == true)  // the first decision always notifies
        q.complete(head: 3, writtenBytes: 1)
        #expect(q.shouldNotify() == false)  // used idx 1 → 2, guest wants an interrupt only past 5
        ring.setUsedEvent(1)
        #expect(q.shouldNotify() == false)  // nothing new since the last decision

        var legacy = try ring.queue(features: VirtioFeatures.version1)
        ring.setAvailableIndex(0)
        ring.publish(0)
        _ = legacy.pop(into: iov.buffer, memory: ring.memory)
        legacy.complete(head: 0, writtenBytes: 1)
        ring.setAvailableFlags(1)  // VRING_AVAIL_F_NO_INTERRUPT
        #expect(legacy.shouldNotify() == false)
        ring.setAvailableFlags(0)
        #expect(legacy.shouldNotify() == true)
    }

    @Test func notificationsReArmWithoutLosingAKick() throws {
        var ring = try Ring(size: 8)
        var q = try ring.queue()
        let iov = IovecStorage(4)
        #expect(q.enableNotifications() == false)
        ring.request(first: 0, type: VirtioBlkType.read)
        ring.publish(0)
        #expect(q.enableNotifications() == true)  // arrived meanwhile: pop again instead of sleeping
        _ = q.pop(into: iov.buffer, memory: ring.memory)
        #expect(!q.enableNotifications() && ring.availEvent == 1)

        let legacy = try ring.queue(features: VirtioFeatures.version1, lastAvailableIndex: 1)
        ring.setUsedFlags(1)  // VRING_USED_F_NO_NOTIFY, as an earlier back-end may have left it
        #expect(!legacy.enableNotifications() && ring.usedFlags == 0)
    }

    @Test func indicesWrapAt16Bits() throws {
        var ring = try Ring(size: 4)
        ring.setAvailableIndex(65534)
        ring.setUsedIndex(65534)
        var q = try ring.queue(lastAvailableIndex: 65534)
        #expect(q.usedIndex == 65534)
        let iov = IovecStorage(4)
        // Two FLUSH chains (header, status) at heads 0 and 2, published three times each.
        ring.writeHeader(at: Ring.data(0x100), type: VirtioBlkType.flush)
        for head: UInt16 in [0, 2] {
            ring.setDescriptor(Int(head), address: Ring.data(0x100), length: 16, flags: Self.N, next: head + 1)
            ring.setDescriptor(Int(head) + 1, address: Ring.data(0x200 + UInt64(head)), length: 1, flags: Self.W)
        }
        for round in 0..<3 {
            for head: UInt16 in [0, 2] { ring.publish(head) }
            for head: UInt16 in [0, 2] {
                let c = try #require(q.pop(into: iov.buffer, memory: ring.memory).chain, "round \(round)")
                #expect(c.head == head)
                #expect(q.complete(head: head, writtenBytes: 1) == true)
            }
        }
        #expect(q.lastAvailableIndex == 4 && ring.availableIndex == 4)  // 65534 + 6
        #expect(ring.usedIndex == 4 && q.usedIndex == 4)
        // used ring slots wrapped too: slot (65534 + 5) % 4 == 3 holds the last completion.
        #expect(ring.usedElement(3) == (2, 1) && ring.usedElement(2) == (0, 1))
    }
}
