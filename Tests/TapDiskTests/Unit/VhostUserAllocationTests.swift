import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// The vhost-user data plane allocates nothing per request: pop (direct and indirect chains),
/// classify, status write, complete, notify decision, re-arm. Uses the counting malloc of
/// Support/AllocationCounter.swift (calls on this thread only).
@Suite(.skipUnderSanitizer(Sanitizer.mallocReason)) struct VhostUserAllocationTests {
    typealias Ring = VhostUserTestRing

    /// With `inflight`, every pop and answer also keeps the inflight region (INFLIGHT_SHMFD).
    @Test(arguments: [false, true]) func dataPlaneAllocatesNothingPerRequest(inflight: Bool) throws {
        try #require(mallocCounterActive, "the malloc counter is not interposed")
        var ring = try Ring(size: 8)
        let region = try InflightRegion.create(queueCount: 1, queueSize: 8, maxQueueSize: 1024)
        var q = try ring.queue(inflight: inflight ? region.queue(0) : nil)
        let iov = IovecStorage(16)
        let disk = VirtioBlkDisk(
            capacitySectors: 2048, blockSize: 512, readOnly: false, discard: true, maxDiscardSectors: 1024,
            maxWriteZeroesSectors: 1024)
        // Head 0: direct READ; head 5: indirect WRITE (table of three at +0x4000).
        ring.request(first: 0, type: VirtioBlkType.read, sector: 8)
        let table = Ring.indirect(0)
        let header = Ring.data(0x9_0000)
        ring.writeHeader(at: header, type: VirtioBlkType.write, sector: 16)
        ring.setDescriptor(0, address: header, length: 16, flags: Ring.N, next: 1, table: table)
        ring.setDescriptor(1, address: Ring.data(0x2000), length: 4096, flags: Ring.N, next: 2, table: table)
        ring.setDescriptor(2, address: header + 16, length: 1, flags: Ring.W, table: table)
        ring.setDescriptor(5, address: table, length: 48, flags: Ring.I)

        var served = 0
        var wrong = 0
        func round(_ ring: inout Ring) {
            ring.publish(0)
            ring.publish(5)
            while case .chain(let c) = q.pop(into: iov.buffer, memory: ring.memory) {
                switch VirtioBlkRequest.classify(c, storage: iov.buffer, disk: disk) {
                case .read(let sector, let bytes) where sector == 8 && bytes == 4096: served += 1
                case .write(let sector, let bytes) where sector == 16 && bytes == 4096: served += 1
                default: wrong += 1
                }
                VirtioBlkStatus.ok.write(to: c.status)
                if !q.complete(head: c.head, writtenBytes: UInt32(c.writableBytes) + 1) { wrong += 1 }
            }
            if q.shouldNotify() { served += 0 }
            if q.enableNotifications() { wrong += 1 }
        }
        for _ in 0..<100 { round(&ring) }  // warm-up
        let allocations = countAllocations {
            for _ in 0..<5000 { round(&ring) }
        }
        #expect(served == 2 * 5100 && wrong == 0)
        #expect(allocations == 0, "\(allocations) allocations over 10000 requests")
    }
}
