import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// The shared-memory layout of §4 checked from Swift (the C side has `_Static_assert`s).
@Suite struct RingABITests {
    @Test func requestSlotLayout() {
        typealias R = clibaio_blkif_request
        #expect(MemoryLayout<R>.size == 112)
        #expect(MemoryLayout<R>.offset(of: \.operation) == 0)
        #expect(MemoryLayout<R>.offset(of: \.nr_segments) == 1)
        #expect(MemoryLayout<R>.offset(of: \.handle) == 2)
        #expect(MemoryLayout<R>.offset(of: \.id) == 8)
        #expect(MemoryLayout<R>.offset(of: \.sector_number) == 16)
        #expect(MemoryLayout<R>.offset(of: \.seg) == 24)
        #expect(MemoryLayout<clibaio_blkif_segment>.size == 8)
        #expect(MemoryLayout<clibaio_blkif_segment>.offset(of: \.gref) == 0)
        #expect(MemoryLayout<clibaio_blkif_segment>.offset(of: \.first_sect) == 4)
        #expect(MemoryLayout<clibaio_blkif_segment>.offset(of: \.last_sect) == 5)
    }

    @Test func responseLayout() {
        typealias P = clibaio_blkif_response
        #expect(MemoryLayout<P>.size == 16)
        #expect(MemoryLayout<P>.offset(of: \.id) == 0)
        #expect(MemoryLayout<P>.offset(of: \.operation) == 8)
        #expect(MemoryLayout<P>.offset(of: \.pad0) == 9)
        #expect(MemoryLayout<P>.offset(of: \.status) == 10)
        #expect(MemoryLayout<P>.offset(of: \.pad1) == 12)
        #expect(MemoryLayout<iocb>.size == 64)
        #expect(MemoryLayout<io_event>.size == 32)
    }

    @Test func ringEntriesPerOrder() {
        #expect((0...4).map { RingLayout.entries(pageOrder: $0) } == [32, 64, 128, 256, 512])
        #expect(RingLayout.entries(pageOrder: 8) == 8192)
        #expect(RingLayout.slotOffset(index: 0, entries: 32) == 64)
        #expect(RingLayout.slotOffset(index: 33, entries: 32) == 64 + 112)
        #expect(RingLayout.slotOffset(index: UInt32.max, entries: 32) == 64 + 31 * 112)
    }

    @Test func discardViewAndResponseWriterTouchOnlyTheirBytes() {
        let r = BlkifRequest.discard(id: 7, sector: 9, sectors: 0x1122_3344_5566_7788)
        #expect(withUnsafePointer(to: r) { clibaio_blkif_discard_sectors($0) } == 0x1122_3344_5566_7788)
        var slot = [UInt8](repeating: 0xAB, count: 112)
        slot.withUnsafeMutableBytes { clibaio_blkif_write_response($0.baseAddress, 0x0102_0304_0506_0708, 3, -2) }
        #expect(Array(slot[0..<8]) == [8, 7, 6, 5, 4, 3, 2, 1])
        #expect(slot[8] == 3)
        #expect(slot[9] == 0)
        #expect(slot[10] == 0xFE && slot[11] == 0xFF)
        #expect(Array(slot[12..<16]) == [0, 0, 0, 0])
        #expect(slot[16...].allSatisfy { $0 == 0xAB })
    }

    /// Free-running u32 indices: a ring whose indices start just below 2^32 works across the wrap.
    @Test func indicesWrapAround() throws {
        let h = try EngineHarness(pageOrder: 0, startIndex: UInt32.max - 40)
        var id: UInt64 = 0
        for _ in 0..<6 {
            var batch: [clibaio_blkif_request] = []
            for _ in 0..<20 {
                batch.append(
                    BlkifRequest.write(id: id, sector: id * 8, segments: [BlkifSegment(gref: UInt32(id % 512))]))
                id += 1
            }
            h.submit(batch)
            #expect(h.run(untilResponses: Int(id)))
        }
        #expect(h.responses.count == 120)
        #expect(Set(h.responses.map(\.id)) == Set(0..<120))
        #expect(h.responses.allSatisfy { $0.status == 0 && $0.operation == 1 && $0.paddingIsZero })
        #expect(h.engine.requestConsumerIndex == (UInt32.max - 40) &+ 120)
    }

    /// §5.1 ring violation: `req_prod` beyond what the ring can hold halts the disk; requests
    /// already consumed are still answered.
    @Test func impossibleRequestProducerHalts() throws {
        let h = try EngineHarness(pageOrder: 0)
        h.submit([BlkifRequest.write(id: 1, sector: 0, segments: [BlkifSegment(gref: 0)])])
        #expect(h.run(untilResponses: 1))
        // The frontend claims 33 more requests on a 32-entry ring.
        h.frontend.ringBase.storeBytes(of: UInt32(1 + 33), toByteOffset: 0, as: UInt32.self)
        h.frontend.kick.signal()
        #expect(h.run(until: { h.engine.state == .halted }, timeoutSeconds: 5))
        #expect(h.events.contains { if case .frontendViolation = $0 { true } else { false } })
        let idx = h.events.firstIndex { if case .frontendViolation = $0 { true } else { false } }!
        #expect(h.events[idx + 1] == .stateChanged(.halted))
        #expect(h.responses.count == 1)
        #expect(h.engine.counters.invariantHolds)
    }

    @Test func requestProducerMovingBackwardsHalts() throws {
        let h = try EngineHarness(pageOrder: 0)
        h.submit((0..<4).map { BlkifRequest.read(id: $0, sector: $0 * 8, segments: [BlkifSegment(gref: UInt32($0))]) })
        #expect(h.run(untilResponses: 4))
        h.frontend.ringBase.storeBytes(of: UInt32(2), toByteOffset: 0, as: UInt32.self)
        h.frontend.kick.signal()
        #expect(h.run(until: { h.engine.state == .halted }, timeoutSeconds: 5))
    }
}
