import CLibAIO
import Foundation
import Glibc
import Synchronization
import Testing

@testable import TapDisk

/// Every request is answered exactly once, proven through the daemon's own loop (`DiskLoop`):
/// each test sleeps in the same epoll the daemon sleeps in, so a request that the daemon would
/// never answer times out here. These are the cases that once hung (a BARRIER parked on an idle
/// disk, and a busy ring left unarmed after the round limit).
@Suite struct BarrierLoopTests {
    static let deadline = 5.0

    func pages(_ h: EngineHarness, _ grefs: ClosedRange<UInt32>, seed: UInt64) -> [BlkifSegment] {
        for g in grefs { h.fill(gref: g, seed: seed &+ UInt64(g)) }
        return grefs.map { BlkifSegment(gref: $0) }
    }

    func pageBytes(_ h: EngineHarness, _ grefs: ClosedRange<UInt32>) -> [UInt8] {
        grefs.flatMap { Array(UnsafeRawBufferPointer(start: h.frontend.page($0), count: 4096)) }
    }

    @Test(arguments: [0, 50] as [UInt64]) func emptyBarrierOnIdleDisk(pollMicroseconds: UInt64) throws {
        let h = try EngineHarness(imageBytes: 1 << 20, pollMicroseconds: pollMicroseconds)
        h.submit([BlkifRequest.barrier(id: 7)])
        #expect(h.run(untilResponses: 1, timeoutSeconds: Self.deadline), "an empty BARRIER on an idle disk hung")
        #expect(h.responses.map(\.id) == [7] && h.status(of: 7) == 0)
        #expect(h.responses.first?.operation == BlkifOperation.writeBarrier.rawValue)
        // The disk is alive afterwards.
        h.submit([BlkifRequest.read(id: 8, sector: 0, segments: [BlkifSegment(gref: 0)])])
        #expect(h.run(untilResponses: 2, timeoutSeconds: Self.deadline))
        #expect(h.engine.counters.invariantHolds && h.engine.isDrained)
    }

    @Test(arguments: [0, 50] as [UInt64]) func barrierWithDataOnIdleDisk(pollMicroseconds: UInt64) throws {
        let h = try EngineHarness(imageBytes: 1 << 20, pollMicroseconds: pollMicroseconds)
        let segs = pages(h, 0...2, seed: 40)
        h.submit([BlkifRequest.barrier(id: 1, sector: 64, segments: segs)])
        #expect(h.run(untilResponses: 1, timeoutSeconds: Self.deadline), "a BARRIER with data on an idle disk hung")
        #expect(h.status(of: 1) == 0)
        let landed = h.readImage(offset: 64 * 512, count: 3 * 4096) == pageBytes(h, 0...2)
        #expect(landed, "the BARRIER's data is not in the image")
        #expect(h.engine.counters.barrierRequests == 1 && h.engine.counters.writeBytes == 3 * 4096)
    }

    @Test(arguments: [0, 50] as [UInt64]) func barrierAsFirstRequestAfterAttach(pollMicroseconds: UInt64) throws {
        let h = try EngineHarness(imageBytes: 1 << 20, attach: false, pollMicroseconds: pollMicroseconds)
        let segs = pages(h, 0...0, seed: 9)
        // Published before attach (§3): served without a kick.
        h.frontend.enqueue(BlkifRequest.barrier(id: 1))
        h.frontend.enqueue(BlkifRequest.write(id: 2, sector: 8, segments: segs))
        h.frontend.enqueue(BlkifRequest.barrier(id: 3, sector: 16, segments: segs))
        h.frontend.push()
        try h.attach()
        #expect(h.run(untilResponses: 3, timeoutSeconds: Self.deadline), "a BARRIER first after attach hung")
        #expect(h.responses.map(\.id) == [1, 2, 3])
        #expect(h.responses.allSatisfy { $0.status == 0 })
    }

    @Test(arguments: [0, 50] as [UInt64]) func barrierWhileRequestsAreInFlight(pollMicroseconds: UInt64) throws {
        let h = try EngineHarness(imageBytes: 4 << 20, pollMicroseconds: pollMicroseconds)
        var batch: [clibaio_blkif_request] = []
        for i in 0..<8 {
            batch.append(
                BlkifRequest.write(
                    id: UInt64(i), sector: UInt64(i) * 8, segments: pages(h, UInt32(i)...UInt32(i), seed: 100)))
        }
        batch.append(BlkifRequest.barrier(id: 100, sector: 128, segments: pages(h, 20...21, seed: 7)))
        for i in 0..<4 {
            batch.append(
                BlkifRequest.read(
                    id: 200 + UInt64(i), sector: UInt64(i) * 8, segments: [BlkifSegment(gref: 40 + UInt32(i))]))
        }
        h.submit(batch)
        #expect(h.run(untilResponses: batch.count, timeoutSeconds: Self.deadline))
        let order = h.responses.map(\.id)
        let barrierAt = try #require(order.firstIndex(of: 100))
        // Everything consumed before the BARRIER is answered before it; everything after, after.
        #expect(Set(order[..<barrierAt]) == Set(0..<8))
        #expect(Set(order[(barrierAt + 1)...]) == Set(200..<204))
        #expect(h.responses.allSatisfy { $0.status == 0 })
        let ordered = pageBytes(h, 40...43) == pageBytes(h, 0...3)
        #expect(ordered, "reads after the BARRIER did not see the writes before it")
    }

    @Test(arguments: [0, 50] as [UInt64]) func barrierAfterFailedSyncIsAnsweredErrorAtOnce(pollMicroseconds: UInt64)
        throws
    {
        let h = try EngineHarness(imageBytes: 1 << 20, pollMicroseconds: pollMicroseconds)
        h.engine.faults.completionRules = [.init(target: .sync, fault: .errno(EIO))]
        h.submit([BlkifRequest.flush(id: 1)])
        #expect(h.run(untilResponses: 1, timeoutSeconds: Self.deadline))
        #expect(h.status(of: 1) == -1 && h.engine.syncFailed)
        // On an idle disk, empty and with data: both refused without I/O, neither left hanging.
        h.submit([BlkifRequest.barrier(id: 2)])
        #expect(h.run(untilResponses: 2, timeoutSeconds: Self.deadline), "a BARRIER after a failed sync hung")
        h.submit([BlkifRequest.barrier(id: 3, sector: 8, segments: pages(h, 0...0, seed: 1))])
        #expect(h.run(untilResponses: 3, timeoutSeconds: Self.deadline))
        #expect(h.status(of: 2) == -1 && h.status(of: 3) == -1)
        let untouched = h.readImage(offset: 8 * 512, count: 4096) == [UInt8](repeating: 0, count: 4096)
        #expect(untouched, "a refused BARRIER wrote its data")
        #expect(h.engine.counters.flushErrors == 3)
        h.submit([BlkifRequest.read(id: 4, sector: 0, segments: [BlkifSegment(gref: 1)])])
        #expect(h.run(untilResponses: 4, timeoutSeconds: Self.deadline) && h.status(of: 4) == 0)
    }

    /// The request ahead of a BARRIER is refused by `io_submit` itself (answered inside the
    /// submission): the BARRIER must still start, though no completion will come to start it.
    @Test(arguments: [0, 50] as [UInt64]) func barrierAfterARequestThatIoSubmitRefused(pollMicroseconds: UInt64)
        throws
    {
        let h = try EngineHarness(imageBytes: 1 << 20, pollMicroseconds: pollMicroseconds)
        h.engine.faults.submitFaults = [.errno(EBADF)]
        h.submit([
            BlkifRequest.write(id: 1, sector: 0, segments: pages(h, 0...0, seed: 3)), BlkifRequest.barrier(id: 2),
        ])
        #expect(h.run(untilResponses: 2, timeoutSeconds: Self.deadline), "the BARRIER behind a refused write hung")
        #expect(h.status(of: 1) == -1 && h.status(of: 2) == 0)
        #expect(h.engine.counters.invariantHolds && h.engine.isDrained)
    }

    @Test(arguments: [0, 50] as [UInt64]) func readOnlyDisksEmptyBarrier(pollMicroseconds: UInt64) throws {
        let path = try EngineHarness.makeTemporaryImage(bytes: 1 << 20)
        defer { unlink(path) }
        let h = try EngineHarness(imagePath: path, readOnly: true, pollMicroseconds: pollMicroseconds)
        h.submit([BlkifRequest.barrier(id: 5)])
        #expect(h.run(untilResponses: 1, timeoutSeconds: Self.deadline), "a read-only disk's empty BARRIER hung")
        #expect(h.status(of: 5) == 0)
        // One with data is a write to a read-only disk: refused, also at once.
        h.submit([BlkifRequest.barrier(id: 6, sector: 0, segments: [BlkifSegment(gref: 0)])])
        #expect(h.run(untilResponses: 2, timeoutSeconds: Self.deadline) && h.status(of: 6) == -1)
    }

    /// More than `roundsPerService` rounds of requests answered without I/O, from a frontend on
    /// another thread: the loop must run again at once when `service` reports more to do. The
    /// limit is lowered to 1 so that the yield happens thousands of times, not by luck.
    @Test(arguments: [0, 50] as [UInt64]) func moreThanRoundLimitOfRequestsWithoutIO(pollMicroseconds: UInt64) throws {
        let h = try EngineHarness(imageBytes: 1 << 20, attach: false, pollMicroseconds: pollMicroseconds)
        h.engine.roundsPerService = 1
        let frontend = try BlockFrontend(pageOrder: 4, dataPages: 1)
        try h.engine.attach(frontend.makeAttachment())
        let box = UncheckedBox(frontend)
        let done = Atomic<Bool>(false)
        let result = Mutex(NoIOStream.Result())
        let total = 200_000
        let thread = Thread {
            let r = NoIOStream.run(box.value, total: total)
            result.withLock { $0 = r }
            done.store(true, ordering: .releasing)
        }
        if pollMicroseconds == 0 {
            // Give the frontend thread the CPU between a round and the check for more, as a
            // frontend on another CPU would have it; without this a busy machine that runs both
            // threads on one CPU may never reach the limit.
            var rounds = 0
            h.engine.afterRoundForTesting = {
                rounds += 1
                if rounds <= 2000 { usleep(100) }
            }
        }
        thread.start()
        while !done.load(ordering: .acquiring) { h.loop.step(h, maxWaitMilliseconds: 50) }
        let r = result.withLock { $0 }
        print("no-I/O stream through DiskLoop: \(r), round-limit yields \(h.engine.roundLimitYields)")
        #expect(!r.stalled, "the ring stalled: \(r)")
        if pollMicroseconds == 0 {
            // With polling the yield depends on timing; without it, it must have happened.
            #expect(h.engine.roundLimitYields > 0, "the round limit was never reached: the test proved nothing")
        }
        #expect(r.answered == total && r.okay == total && r.duplicates == 0 && r.unknown == 0)
        #expect(h.engine.counters.discardRequests == UInt64(total) && h.engine.counters.invariantHolds)
    }
}

/// Hands a non-Sendable object to one other thread that is then its only user.
final class UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
