import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// The latency histograms in the engine: each answered request is recorded once, under its
/// operation, from consumption to answer (held time included), errors too.
@Suite struct LatencyRecordingTests {
    func harness(_ policy: FailurePolicy = FailurePolicy()) throws -> EngineHarness {
        let h = try EngineHarness(imageBytes: 4 << 20, policy: policy)
        for g in 0..<16 { h.fill(gref: UInt32(g), seed: UInt64(g) + 1) }
        return h
    }

    func write(_ id: UInt64) -> clibaio_blkif_request {
        BlkifRequest.write(id: id, sector: id * 8, segments: [BlkifSegment(gref: UInt32(id % 16))])
    }

    func read(_ id: UInt64) -> clibaio_blkif_request {
        BlkifRequest.read(id: id, sector: id * 8, segments: [BlkifSegment(gref: UInt32(id % 16))])
    }

    func counts(_ e: Engine) -> [LatencyHistograms.Operation: UInt64] {
        var r: [LatencyHistograms.Operation: UInt64] = [:]
        for op in LatencyHistograms.Operation.allCases { r[op] = e.latencySnapshot(op).count }
        return r
    }

    @Test func everyAnsweredRequestIsRecordedOnceUnderItsOperation() throws {
        let h = try harness()
        let start = MonotonicClock.nanoseconds()
        var requests: [clibaio_blkif_request] = []
        for i in 0..<10 { requests.append(write(UInt64(i))) }
        for i in 10..<17 { requests.append(read(UInt64(i))) }
        for i in 17..<20 { requests.append(BlkifRequest.flush(id: UInt64(i))) }
        requests.append(BlkifRequest.barrier(id: 20, sector: 800, segments: [BlkifSegment(gref: 3)]))
        for i in 21..<25 { requests.append(BlkifRequest.discard(id: UInt64(i), sector: UInt64(i) * 64, sectors: 8)) }
        // 0 sectors: answered at consumption without a record, recorded as 0 ns.
        requests.append(BlkifRequest.discard(id: 25, sector: 0, sectors: 0))
        // Rejected (unknown operation): counted in `unsupported-requests`, in no histogram.
        requests.append(BlkifRequest.make(operation: 99, id: 26, sector: 0, segments: []))
        h.submit(requests)
        #expect(h.run(untilResponses: requests.count))
        let elapsed = MonotonicClock.nanoseconds() - start
        #expect(counts(h.engine) == [.write: 10, .read: 7, .flush: 3, .barrier: 1, .discard: 5])
        let c = h.engine.counters
        #expect(c.unsupportedRequests == 1)
        #expect(
            counts(h.engine).values.reduce(0, +)
                == c.readRequests + c.writeRequests + c.flushRequests + c.barrierRequests + c.discardRequests)
        for op in LatencyHistograms.Operation.allCases {
            let s = h.engine.latencySnapshot(op)
            // Each latency lies within the test's own span.
            #expect(s.sumNanos <= s.count * elapsed, "\(op)")
            if op != .discard { #expect(s.sumNanos > 0, "\(op)") }
        }
        // The empty DISCARD is the one sub-microsecond entry it is sure to have.
        #expect(h.engine.latencySnapshot(.discard).buckets[0] >= 1)
    }

    @Test func errorsAreRecordedToo() throws {
        let h = try harness()
        h.engine.faults.completionRules = [.init(target: .read, fault: .errno(EIO), count: 1)]
        h.submit([read(1), read(2)])
        #expect(h.run(untilResponses: 2))
        #expect(h.engine.counters.responsesError == 1)
        #expect(h.engine.latencySnapshot(.read).count == 2)
    }

    /// A request held under the `pause` policy is recorded once, when it is answered, with the
    /// time it was held in its latency.
    @Test func heldRequestIsRecordedOnceWhenAnsweredWithItsWait() throws {
        let h = try harness(FailurePolicy(onNospace: .pause))
        h.engine.faults.completionRules = [.init(target: .write, fault: .errno(ENOSPC), skip: 1, count: 1)]
        h.submit([write(1), write(2), write(3)])
        #expect(h.waitQuiescent())
        #expect(h.engine.held == 1 && h.responses.count == 2)
        let whilePaused = h.engine.latencySnapshot(.write)
        #expect(whilePaused.count == 2)
        // The hold is what is measured here, not a wait for an event: whatever its length, the
        // held request's latency must include it.
        let heldFrom = MonotonicClock.nanoseconds()
        usleep(30_000)
        let heldFor = MonotonicClock.nanoseconds() - heldFrom
        _ = h.engine.resume(failHeld: false)
        #expect(h.run(untilResponses: 3))
        #expect(h.responses.allSatisfy { $0.status == 0 })
        let after = h.engine.latencySnapshot(.write)
        #expect(after.count == 3)
        #expect(after.sumNanos - whilePaused.sumNanos >= heldFor)
        #expect(h.engine.counters.resubmittedRequests == 1)
    }

    /// `fail-held`: the held request's ERROR answer is recorded, once.
    @Test func heldRequestFailedOnResumeIsRecordedOnce() throws {
        let h = try harness(FailurePolicy(onNospace: .pause))
        h.engine.faults.completionRules = [.init(target: .write, fault: .errno(ENOSPC), count: 1)]
        h.submit([write(1)])
        #expect(h.waitQuiescent())
        #expect(h.engine.held == 1 && h.engine.latencySnapshot(.write).count == 0)
        _ = h.engine.resume(failHeld: true)
        #expect(h.run(untilResponses: 1))
        #expect(h.status(of: 1) == -1)
        #expect(h.engine.latencySnapshot(.write).count == 1)
    }
}
