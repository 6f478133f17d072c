import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// The split virtqueue against rings written into a memfd as a guest driver would — and as a
/// hostile one would: loops, wild addresses, oversized and malformed indirect tables, wrong
/// directions, index jumps, heads handed out twice, and 16-bit wraparound.
@Suite struct VhostUserSplitVirtqueueTests {
    typealias Ring = VhostUserTestRing
    static let N = Ring.N
    static let W = Ring.W
    static let I = Ring.I

    @Test func readChainTranslatesHeaderDataAndStatus() throws {
        var ring = try Ring(size: 8)
        var q = try ring.queue()
        let iov = IovecStorage(4)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).isEmpty)
        ring.request(first: 0, type: VirtioBlkType.read, sector: 8, dataLength: 4096)
        ring.publish(0)
        let c = try #require(q.pop(into: iov.buffer, memory: ring.memory).chain)
        #expect(c.head == 0 && c.type == 0 && c.sector == 8)
        #expect(c.readableSegments == 0 && c.writableSegments == 1)
        #expect(c.readableBytes == 0 && c.writableBytes == 4096)
        #expect(iov.buffer[0].iov_base == ring.host(Ring.data(0)) && iov.buffer[0].iov_len == 4096)
        #expect(UnsafeMutableRawPointer(c.status) == ring.host(Ring.data(0x8_0000 + 16)))
        #expect(q.lastAvailableIndex == 1 && q.inFlight == 1)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).isEmpty)
    }

    @Test func writeChainKeepsReadableSegmentsInOrder() throws {
        var ring = try Ring(size: 8)
        var q = try ring.queue()
        let iov = IovecStorage(4)
        let header = Ring.data(0x8_0000)
        ring.writeHeader(at: header, type: VirtioBlkType.write, sector: 16)
        ring.setDescriptor(3, address: header, length: 16, flags: Self.N, next: 5)
        ring.setDescriptor(5, address: Ring.data(0x2000), length: 512, flags: Self.N, next: 1)
        ring.setDescriptor(1, address: Ring.data(0x1000), length: 1024, flags: Self.N, next: 7)
        ring.setDescriptor(7, address: header + 16, length: 1, flags: Self.W)
        ring.publish(3)
        let c = try #require(q.pop(into: iov.buffer, memory: ring.memory).chain)
        #expect(c.head == 3 && c.type == 1 && c.sector == 16)
        #expect(c.readableSegments == 2 && c.writableSegments == 0 && c.readableBytes == 1536)
        #expect(iov.buffer[0].iov_base == ring.host(Ring.data(0x2000)) && iov.buffer[0].iov_len == 512)
        #expect(iov.buffer[1].iov_base == ring.host(Ring.data(0x1000)) && iov.buffer[1].iov_len == 1024)
    }

    @Test func headerAndStatusMayShareDescriptorsWithData() throws {
        // VERSION_1 implies ANY_LAYOUT: header+data in one readable buffer, data+status in one
        // writable buffer, header split across two descriptors.
        var ring = try Ring(size: 8)
        var q = try ring.queue()
        let iov = IovecStorage(4)
        let buffer = Ring.data(0x3000)
        ring.writeHeader(at: buffer, type: VirtioBlkType.write, sector: 1)
        ring.setDescriptor(0, address: buffer, length: 16 + 512, flags: Self.N, next: 1)
        ring.setDescriptor(1, address: Ring.data(0x5000), length: 1, flags: Self.W)
        ring.publish(0)
        let c = try #require(q.pop(into: iov.buffer, memory: ring.memory).chain)
        #expect(c.sector == 1 && c.readableSegments == 1 && c.readableBytes == 512 && c.writableSegments == 0)
        #expect(iov.buffer[0].iov_base == ring.host(buffer + 16))

        let header = Ring.data(0x6000)
        ring.writeHeader(at: header, type: VirtioBlkType.read, sector: 0x1122_3344_5566)
        ring.setDescriptor(2, address: header, length: 10, flags: Self.N, next: 3)
        ring.setDescriptor(3, address: header + 10, length: 6, flags: Self.N, next: 4)
        ring.setDescriptor(4, address: Ring.data(0x7000), length: 4097, flags: Self.W)
        ring.publish(2)
        let d = try #require(q.pop(into: iov.buffer, memory: ring.memory).chain)
        #expect(d.type == 0 && d.sector == 0x1122_3344_5566)
        #expect(d.writableSegments == 1 && d.writableBytes == 4096 && iov.buffer[0].iov_len == 4096)
        #expect(UnsafeMutableRawPointer(d.status) == ring.host(Ring.data(0x7000 + 4096)))
    }

    @Test func descriptorLoopsAreBoundedByTheTableSize() throws {
        var ring = try Ring(size: 8)
        var q = try ring.queue()
        let iov = IovecStorage(64)
        ring.writeHeader(at: Ring.data(0), type: VirtioBlkType.write)
        ring.setDescriptor(0, address: Ring.data(0), length: 16, flags: Self.N, next: 1)
        ring.setDescriptor(1, address: Ring.data(0x100), length: 0, flags: Self.N, next: 0)
        ring.publish(0)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).malformation == .chainTooLong)
        ring.setDescriptor(2, address: Ring.data(0), length: 0, flags: Self.N, next: 2)  // self-loop
        ring.publish(2)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).malformation == .chainTooLong)
        // Every malformed head is still completed once.
        #expect(q.complete(head: 0, writtenBytes: 0) && q.complete(head: 2, writtenBytes: 0))
        #expect(ring.usedIndex == 2 && ring.usedElement(0).id == 0 && ring.usedElement(1).id == 2)
    }

    @Test func nextBeyondTheTableIsRefused() throws {
        var ring = try Ring(size: 8)
        var q = try ring.queue()
        let iov = IovecStorage(4)
        ring.setDescriptor(0, address: Ring.data(0), length: 16, flags: Self.N, next: 8)
        ring.publish(0)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).malformation == .descriptorIndexOutOfRange(8))
    }

    @Test func addressesOutsideGuestMemoryAreRefused() throws {
        var ring = try Ring(size: 8)
        var q = try ring.queue()
        let iov = IovecStorage(4)
        ring.request(first: 0, type: VirtioBlkType.read)
        ring.setDescriptor(1, address: Ring.base + Ring.bytes - 100, length: 4096, flags: Self.N | Self.W, next: 2)
        ring.publish(0)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).malformation == .addressOutOfRange)
        ring.request(first: 3, type: VirtioBlkType.read)
        ring.setDescriptor(4, address: UInt64.max - 10, length: 4096, flags: Self.N | Self.W, next: 5)
        ring.publish(3)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).malformation == .addressOutOfRange)
        ring.request(first: 0, type: VirtioBlkType.read)
        ring.setDescriptor(0, address: 0x1000, length: 16, flags: Self.N, next: 1)  // below the region
        ring.publish(6)
        ring.setDescriptor(6, address: 0, length: 16, flags: 0)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).malformation == .addressOutOfRange)
    }

    @Test func chainsAreBoundedInBytesAndSegments() throws {
        var ring = try Ring(size: 8)
        var q = try ring.queue(maxChainBytes: 16 + 4096 + 1)
        let iov = IovecStorage(2)
        ring.request(first: 0, type: VirtioBlkType.read, dataLength: 4096)
        ring.publish(0)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).chain != nil)
        ring.request(first: 3, type: VirtioBlkType.read, dataLength: 4097)
        ring.publish(3)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).malformation == .chainBytesExceeded)
        // u32 lengths summing past 4 GiB are summed in 64 bits and refused before translation.
        var big = try ring.queue(maxChainBytes: UInt64(UInt32.max))
        ring.setDescriptor(0, address: Ring.data(0), length: 16, flags: Self.N, next: 1)
        ring.setDescriptor(1, address: Ring.data(0), length: UInt32.max, flags: Self.W)
        ring.publish(0)
        #expect(big.pop(into: iov.buffer, memory: ring.memory).malformation == .chainBytesExceeded)

        // Three data segments do not fit in two iovecs.
        var small = try ring.queue()
        ring.writeHeader(at: Ring.data(0x9000), type: VirtioBlkType.write)
        ring.setDescriptor(0, address: Ring.data(0x9000), length: 16, flags: Self.N, next: 1)
        ring.setDescriptor(1, address: Ring.data(0), length: 512, flags: Self.N, next: 2)
        ring.setDescriptor(2, address: Ring.data(0x1000), length: 512, flags: Self.N, next: 4)
        ring.setDescriptor(4, address: Ring.data(0x2000), length: 512, flags: Self.N, next: 5)
        ring.setDescriptor(5, address: Ring.data(0x9010), length: 1, flags: Self.W)
        ring.setAvailableIndex(0)
        ring.publish(0)
        #expect(small.pop(into: iov.buffer, memory: ring.memory).malformation == .tooManySegments)
    }

    @Test func indirectTablesAreWalkedOnceAndBounded() throws {
        var ring = try Ring(size: 8)
        var q = try ring.queue()
        let iov = IovecStorage(8)
        let table = Ring.indirect(0)
        let header = Ring.data(0x8_0000)
        ring.writeHeader(at: header, type: VirtioBlkType.read, sector: 24)
        ring.setDescriptor(0, address: header, length: 16, flags: Self.N, next: 1, table: table)
        ring.setDescriptor(1, address: Ring.data(0), length: 2048, flags: Self.N | Self.W, next: 2, table: table)
        ring.setDescriptor(2, address: header + 16, length: 1, flags: Self.W, table: table)
        ring.setDescriptor(5, address: table, length: 48, flags: Self.I)
        ring.publish(5)
        let c = try #require(q.pop(into: iov.buffer, memory: ring.memory).chain)
        #expect(c.head == 5 && c.sector == 24 && c.writableBytes == 2048)

        func refuse(_ flags: UInt16, _ length: UInt32, address: UInt64 = table) -> VirtqueueChainError? {
            ring.setDescriptor(5, address: address, length: length, flags: flags)
            ring.publish(5)
            defer { q.complete(head: 5, writtenBytes: 0) }
            return q.pop(into: iov.buffer, memory: ring.memory).malformation
        }
        q.complete(head: 5, writtenBytes: 2049)
        #expect(refuse(Self.I, 0) == .indirectBadLength)
        #expect(refuse(Self.I, 47) == .indirectBadLength)
        #expect(refuse(Self.I | Self.N, 48) == .indirectMisplaced)
        #expect(refuse(Self.I, 48, address: UInt64.max - 15) == .addressOutOfRange)
        #expect(refuse(Self.I, 48, address: Ring.base + Ring.bytes - 32) == .addressOutOfRange)
        #expect(refuse(Self.I, 16 * 1025) == .indirectBadLength)

        // A loop inside the table, a next beyond it, and a nested indirect descriptor.
        ring.setDescriptor(2, address: header + 16, length: 1, flags: Self.W | Self.N, next: 0, table: table)
        #expect(refuse(Self.I, 48) == .chainTooLong)  // 0 → 1 → 2 → 0: the fourth visit of a 3-entry table
        ring.setDescriptor(2, address: header + 16, length: 0, flags: Self.N, next: 1, table: table)
        #expect(refuse(Self.I, 48) == .readableAfterWritable)
        ring.setDescriptor(2, address: header + 16, length: 1, flags: Self.W | Self.N, next: 3, table: table)
        #expect(refuse(Self.I, 48) == .descriptorIndexOutOfRange(3))
        ring.setDescriptor(1, address: table, length: 48, flags: Self.I, table: table)
        #expect(refuse(Self.I, 48) == .indirectMisplaced)
        // Indirect only on the head.
        ring.setDescriptor(4, address: header, length: 16, flags: Self.N, next: 5)
        ring.setDescriptor(5, address: table, length: 48, flags: Self.I)
        ring.publish(4)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).malformation == .indirectMisplaced)
    }

    @Test func indirectNeedsTheFeatureAndHonoursTheEntryBound() throws {
        var ring = try Ring(size: 8)
        let iov = IovecStorage(8)
        var plain = try ring.queue(features: VirtioFeatures.version1)
        ring.setDescriptor(0, address: Ring.indirect(0), length: 48, flags: Self.I)
        ring.publish(0)
        #expect(plain.pop(into: iov.buffer, memory: ring.memory).malformation == .indirectNotNegotiated)
        var bounded = try ring.queue(maxIndirectEntries: 2)
        #expect(bounded.pop(into: iov.buffer, memory: ring.memory).malformation == .indirectBadLength)
    }

    @Test func directionsAreChecked() throws {
        var ring = try Ring(size: 8)
        var q = try ring.queue()
        let iov = IovecStorage(4)
        ring.request(first: 0, type: VirtioBlkType.write)
        ring.setDescriptor(1, address: Ring.data(0), length: 512, flags: Self.N | Self.W, next: 2)
        ring.setDescriptor(2, address: Ring.data(0x2000), length: 1, flags: 0)  // readable after writable
        ring.publish(0)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).malformation == .readableAfterWritable)
        ring.request(first: 3, type: VirtioBlkType.write)
        ring.setDescriptor(5, address: Ring.data(0x2000), length: 1, flags: 0)  // no writable byte
        ring.publish(3)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).malformation == .noStatusByte)
        // A short header is refused, but the status byte is known so IOERR can be written.
        ring.setDescriptor(6, address: Ring.data(0x3000), length: 8, flags: Self.N, next: 7)
        ring.setDescriptor(7, address: Ring.data(0x4000), length: 1, flags: Self.W)
        ring.publish(6)
        let pop = q.pop(into: iov.buffer, memory: ring.memory)
        #expect(pop.malformation == .headerTooShort)
        #expect(pop.malformedStatus.map { UnsafeMutableRawPointer($0) } == ring.host(Ring.data(0x4000)))
    }

    @Test func hostileAvailRingStopsTheQueue() throws {
        var ring = try Ring(size: 8)
        let iov = IovecStorage(4)
        var q = try ring.queue()
        ring.setAvailableIndex(9)  // nine new entries in an eight-entry ring
        #expect(q.pop(into: iov.buffer, memory: ring.memory).fault == .availableIndexJump(9))
        ring.setAvailableIndex(1)
        #expect(q.pop(into: iov.buffer, memory: ring.memory).fault == .availableIndexJump(9))  // sticky

        var r = try ring.queue()
        ring.setAvailableIndex(0)
        ring.publish(8)
        #expect(r.pop(into: iov.buffer, memory: ring.memory).fault == .headOutOfRange(8))

        var s = try ring.queue()
        ring.setAvailableIndex(0)
        ring.request(first: 0, type: VirtioBlkType.read)
        ring.publish(0)
        ring.publish(0)  // the same head again while it is in flight
        #expect(s.pop(into: iov.buffer, memory: ring.memory).chain?.head == 0)
        #expect(s.pop(into: iov.buffer, memory: ring.memory).fault == .headInFlight(0))
    }

    @Test func completionPublishesExactlyOneUsedEntryPerHead() throws {
        var ring = try Ring(size: 8)
        var q = try ring.queue()
        let iov = IovecStorage(4)
        ring.request(first: 0, type: VirtioBlkType.read)
        ring.request(first: 3, type: VirtioBlkType.read)
        ring.publish(0)
        ring.publish(3)
        _ = q.pop(into: iov.buffer, memory: ring.memory)
        _ = q.pop(into: iov.buffer, memory: ring.memory)
        #expect(q.complete(head: 3, writtenBytes: 4097) == true)  // out of order is fine
        #expect(ring.usedIndex == 1 && ring.usedElement(0) == (3, 4097))
        #expect(q.complete(head: 3, writtenBytes: 1) == false)  // twice: refused, nothing written
        #expect(q.complete(head: 1, writtenBytes: 1) == false)  // never popped
        #expect(q.complete(head: 200, writtenBytes: 1) == false)
        #expect(ring.usedIndex == 1)
        #expect(q.complete(head: 0, writtenBytes: 1) == true)
        #expect(ring.usedIndex == 2 && ring.usedElement(1) == (0, 1) && q.inFlight == 0)
    }

    @Test func setupRefusesBadSizesAlignmentAndUnmappedRings() throws {
        let ring = try Ring(size: 8)
        let limits = VirtqueueLimits(maxChainBytes: 1 << 20)
        func setup(size: UInt32, _ a: VhostUserVringAddress) -> VirtqueueSetupError? {
            do {
                _ = try SplitVirtqueue(
                    size: size, addresses: a, lastAvailableIndex: 0, features: 0, memory: ring.memory, limits: limits)
                return nil
            } catch { return error }
        }
        #expect(setup(size: 8, ring.addresses) == nil)
        #expect(setup(size: 0, ring.addresses) == .badSize(0))
        #expect(setup(size: 6, ring.addresses) == .badSize(6))
        #expect(setup(size: 65536, ring.addresses) == .badSize(65536))
        var a = ring.addresses
        a.descriptorTable += 8
        #expect(setup(size: 8, a) == .misaligned)
        a = ring.addresses
        a.usedRing += 2
        #expect(setup(size: 8, a) == .misaligned)
        a = ring.addresses
        a.availableRing = Ring.base + Ring.availOffset  // a guest-physical address is not a user address
        #expect(setup(size: 8, a) == .ringNotMapped)
        a = ring.addresses
        a.usedRing = Ring.userBase + Ring.bytes - 16  // the used ring would run past the region
        #expect(setup(size: 8, a) == .ringNotMapped)
        #expect(setup(size: 32768, ring.addresses) == nil)  // 512 KiB descriptor table still fits
    }

    @Test func dataSpanningAdjacentRegionsBecomesTwoIovecs() throws {
        let memory = try VhostUserTest.guestMemory([
            VhostUserMemoryRegion(
                guestPhysicalAddress: 0x10_0000, size: 0x1_0000, userAddress: 0x5000_0000, mmapOffset: 0),
            VhostUserMemoryRegion(
                guestPhysicalAddress: 0x11_0000, size: 0x1_0000, userAddress: 0x6000_0000, mmapOffset: 0),
        ])
        let d = memory.translate(guestPhysical: 0x10_0000, length: 1)!
        func desc(_ i: Int, _ addr: UInt64, _ len: UInt32, _ flags: UInt16, _ next: UInt16) {
            let p = d + 16 * i
            p.storeBytes(of: addr, as: UInt64.self)
            p.storeBytes(of: len, toByteOffset: 8, as: UInt32.self)
            p.storeBytes(of: flags, toByteOffset: 12, as: UInt16.self)
            p.storeBytes(of: next, toByteOffset: 14, as: UInt16.self)
        }
        desc(0, 0x10_8000, 16, Self.N, 1)
        desc(1, 0x10_f800, 0x1000, Self.N | Self.W, 2)  // 2 KiB in each region
        desc(2, 0x10_8010, 1, Self.W, 0)
        let avail = memory.translate(guestPhysical: 0x10_1000, length: 1)!
        avail.storeBytes(of: UInt16(1), toByteOffset: 2, as: UInt16.self)
        var q = try SplitVirtqueue(
            size: 8,
            addresses: VhostUserVringAddress(
                index: 0, flags: 0, descriptorTable: 0x5000_0000, usedRing: 0x5000_2000, availableRing: 0x5000_1000),
            lastAvailableIndex: 0, features: VirtioFeatures.version1, memory: memory,
            limits: VirtqueueLimits(maxChainBytes: 1 << 20))
        let iov = IovecStorage(4)
        let c = try #require(q.pop(into: iov.buffer, memory: memory).chain)
        #expect(c.writableSegments == 2 && c.writableBytes == 0x1000)
        #expect(iov.buffer[0].iov_base == memory.translate(guestPhysical: 0x10_f800, length: 1))
        #expect(iov.buffer[0].iov_len == 0x800)
        #expect(iov.buffer[1].iov_base == memory.translate(guestPhysical: 0x11_0000, length: 1))
        #expect(iov.buffer[1].iov_len == 0x800)
    }
}
