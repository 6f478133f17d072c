import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// Real I/O through the ring into an image file, frontend and engine in one process.
@Suite struct EngineIOTests {
    /// Write then read back with 1..11 segments, partial-page segments and many offsets.
    @Test(arguments: [CacheMode.none, .writeback, .writethrough, .directsync])
    func roundTrips(cache: CacheMode) throws {
        let h = try EngineHarness(imageBytes: 16 << 20, cache: cache, pageOrder: 2, dataPages: 512)
        var rng = SplitMix(seed: 7)
        var expected: [(sector: UInt64, bytes: [UInt8])] = []
        var id: UInt64 = 0
        var nextSector: UInt64 = 0
        for n in 1...11 {
            for variant in 0..<3 {
                var segments: [BlkifSegment] = []
                var bytes: [UInt8] = []
                for s in 0..<n {
                    let gref = UInt32((Int(id) * 11 + s) % 512)
                    let first: UInt8 = variant == 1 ? UInt8(rng.next() % 4) : 0
                    let last: UInt8 = variant == 2 ? UInt8(4 + rng.next() % 4) : 7
                    segments.append(BlkifSegment(gref: gref, firstSector: first, lastSector: last))
                    h.fill(gref: gref, seed: id &* 100 &+ UInt64(s))
                    let page = h.frontend.page(gref) + Int(first) * 512
                    bytes += Array(UnsafeRawBufferPointer(start: page, count: Int(last - first + 1) * 512))
                }
                let sector = nextSector
                nextSector += UInt64(bytes.count / 512) + rng.next() % 64
                h.submit([BlkifRequest.write(id: id, sector: sector, segments: segments)])
                expected.append((sector, bytes))
                id += 1
            }
        }
        #expect(h.run(untilResponses: Int(id)))
        #expect(h.responses.allSatisfy { $0.status == 0 && $0.operation == 1 })
        // Read every range back through the ring into freshly scrubbed pages.
        for (i, e) in expected.enumerated() {
            let pages = (e.bytes.count + 4095) / 4096
            var segments: [BlkifSegment] = []
            var remaining = e.bytes.count / 512
            for p in 0..<pages {
                let count = min(8, remaining)
                remaining -= count
                segments.append(BlkifSegment(gref: UInt32(p), firstSector: 0, lastSector: UInt8(count - 1)))
                h.frontend.page(UInt32(p)).initializeMemory(as: UInt8.self, repeating: 0xEE, count: 4096)
            }
            let before = h.responses.count
            h.submit([BlkifRequest.read(id: 1000 + UInt64(i), sector: e.sector, segments: segments)])
            #expect(h.run(untilResponses: before + 1))
            #expect(h.status(of: 1000 + UInt64(i)) == 0)
            var got: [UInt8] = []
            for p in 0..<pages { got += Array(UnsafeRawBufferPointer(start: h.frontend.page(UInt32(p)), count: 4096)) }
            #expect(Array(got.prefix(e.bytes.count)) == e.bytes, "range \(i)")
            // And the file itself holds the same bytes.
            #expect(h.readImage(offset: Int(e.sector) * 512, count: e.bytes.count) == e.bytes)
        }
        let c = h.engine.counters
        #expect(c.writeRequests == UInt64(expected.count) && c.readRequests == UInt64(expected.count))
        #expect(c.writeBytes == UInt64(expected.reduce(0) { $0 + $1.bytes.count }))
        #expect(c.invariantHolds && c.inFlight == 0)
    }

    /// `--cache none` really uses O_DIRECT (and the flags of the other modes).
    @Test func cacheModesSetOpenFlags() throws {
        for (mode, direct, dsync) in [
            (CacheMode.none, true, false), (.writeback, false, false), (.writethrough, false, true),
            (.directsync, true, true),
        ] {
            let h = try EngineHarness(imageBytes: 1 << 20, cache: mode, attach: false)
            let flags = fdinfoFlags(h.engine.image.fd.rawValue)
            #expect((flags & Int(clibaio_O_DIRECT) != 0) == direct, "\(mode)")
            #expect((flags & Int(clibaio_O_DSYNC) != 0) == dsync, "\(mode)")
        }
    }

    @Test func flushAndBarrierOrdering() throws {
        let h = try EngineHarness(imageBytes: 4 << 20)
        h.fill(gref: 0, pages: 4, seed: 5)
        h.submit([
            BlkifRequest.write(id: 1, sector: 0, segments: [BlkifSegment(gref: 0)]),
            BlkifRequest.write(id: 2, sector: 8, segments: [BlkifSegment(gref: 1)]),
            BlkifRequest.barrier(id: 3, sector: 16, segments: [BlkifSegment(gref: 2)]),
            BlkifRequest.write(id: 4, sector: 24, segments: [BlkifSegment(gref: 3)]),
            BlkifRequest.flush(id: 5),
            BlkifRequest.flush(id: 6, sector: 32, segments: [BlkifSegment(gref: 0)]),
        ])
        #expect(h.run(untilResponses: 6))
        #expect(h.responses.allSatisfy { $0.status == 0 })
        let order = h.responses.map(\.id)
        // The barrier is answered after everything consumed before it and before anything after.
        let b = order.firstIndex(of: 3)!
        #expect(Set(order[..<b]) == [1, 2])
        #expect(Set(order[(b + 1)...]) == [4, 5, 6])
        #expect(h.responses.first { $0.id == 3 }?.operation == 2)
        #expect(h.responses.first { $0.id == 5 }?.operation == 3)
        #expect(
            h.readImage(offset: 16 * 512, count: 4096)
                == Array(UnsafeRawBufferPointer(start: h.frontend.page(2), count: 4096)))
        #expect(
            h.readImage(offset: 32 * 512, count: 4096)
                == Array(UnsafeRawBufferPointer(start: h.frontend.page(0), count: 4096)))
        let c = h.engine.counters
        #expect(c.flushRequests == 2 && c.barrierRequests == 1 && c.writeBytes == 5 * 4096)
    }

    /// DISCARD reads back as zeros, partial blocks included; neighbours are untouched.
    @Test func discardZeroesExactlyItsRange() throws {
        let h = try EngineHarness(imageBytes: 4 << 20)
        let before = Pattern.bytes(count: 64 * 1024, seed: 99)
        h.writeImage(offset: 0, bytes: before)
        #expect(h.engine.image.geometry.discard)
        h.submit([
            BlkifRequest.discard(id: 1, sector: 3, sectors: 21),  // unaligned start and end
            BlkifRequest.discard(id: 2, sector: 64, sectors: 32),
            BlkifRequest.discard(id: 3, sector: 4000, sectors: 0),
        ])
        #expect(h.run(untilResponses: 3))
        #expect(h.responses.allSatisfy { $0.status == 0 && $0.operation == 5 })
        let after = h.readImage(offset: 0, count: 64 * 1024)
        for s in 0..<128 {
            let range = (s * 512)..<((s + 1) * 512)
            let zeroed = (3..<24).contains(s) || (64..<96).contains(s)
            if zeroed {
                #expect(after[range].allSatisfy { $0 == 0 }, "sector \(s)")
            } else {
                #expect(Array(after[range]) == Array(before[range]), "sector \(s)")
            }
        }
        #expect(h.engine.counters.discardBytes == 53 * 512)
        #expect(h.engine.counters.discardRequests == 3)
    }

    /// Requests published before attach are served without a kick (§3).
    @Test func servesRequestsPublishedBeforeAttach() throws {
        let h = try EngineHarness(imageBytes: 1 << 20, attach: false)
        for i in 0..<5 {
            h.frontend.enqueue(
                BlkifRequest.read(id: UInt64(i), sector: UInt64(i) * 8, segments: [BlkifSegment(gref: 0)]))
        }
        _ = h.frontend.push()
        try h.engine.attach(h.frontend.makeAttachment())
        h.collect()
        #expect(h.run(untilResponses: 5))
        #expect(h.engine.state == .running)
    }

    @Test func attachRefusesImpossibleRingState() throws {
        let h = try EngineHarness(imageBytes: 1 << 20, pageOrder: 0, attach: false)
        h.frontend.ringBase.storeBytes(of: UInt32(33), toByteOffset: 0, as: UInt32.self)
        #expect(throws: Engine.AttachError.ringState) { try h.engine.attach(h.frontend.makeAttachment()) }
        #expect(!h.engine.isAttached)
    }

    /// Detach answers what was consumed, and a new frontend can attach afterwards.
    @Test func detachDrainsAndReattaches() throws {
        let h = try EngineHarness(imageBytes: 4 << 20)
        h.submit(
            (0..<20).map { BlkifRequest.write(id: $0, sector: $0 * 8, segments: [BlkifSegment(gref: UInt32($0))]) })
        h.engine.beginDetach()
        #expect(h.engine.state == .closing)
        #expect(h.waitDrained())
        let cons = h.finishDetach()
        h.collect()
        #expect(cons == 20)
        #expect(h.responses.count == 20)
        #expect(h.engine.state == .idle)
        // A second frontend on the same engine and loop: the old kick eventfd is out of the
        // epoll set, the new one is in it, and its first request is answered.
        let second = try BlockFrontend(pageOrder: 1, dataPages: 8)
        try h.engine.attach(second.makeAttachment())
        h.frontend.kick.signal()
        #expect(!h.loop.step(h, maxWaitMilliseconds: 0), "the old frontend's kick eventfd still wakes the disk")
        second.enqueue(BlkifRequest.read(id: 77, sector: 0, segments: [BlkifSegment(gref: 0)]))
        second.push()
        var got: [FrontendRing.Response] = []
        let deadline = MonotonicClock.nanoseconds() + 10_000_000_000
        while got.isEmpty && MonotonicClock.nanoseconds() < deadline {
            h.step()
            if second.waitForNotification(timeoutMilliseconds: 0) { _ = second.reap { got.append($0) } }
        }
        #expect(got.map(\.id) == [77])
        #expect(h.engine.counters.invariantHolds)
    }
}

func fdinfoFlags(_ fd: Int32) -> Int {
    guard let f = fopen("/proc/self/fdinfo/\(fd)", "r") else { return 0 }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, 256, f) != nil {
        let s = String(cString: line)
        if s.hasPrefix("flags:") {
            return Int(s.dropFirst(6).trimmingCharacters(in: " \t\n"), radix: 8) ?? 0
        }
    }
    return 0
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let c = s.first, set.contains(c) { s = s.dropFirst() }
        while let c = s.last, set.contains(c) { s = s.dropLast() }
        return String(s)
    }
}
