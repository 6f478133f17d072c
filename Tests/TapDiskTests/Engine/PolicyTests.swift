import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// §6: the report/pause policies, holding, resume, fail-held, timeout, operator pause, detach.
@Suite struct PolicyTests {
    func harness(_ policy: FailurePolicy) throws -> EngineHarness {
        let h = try EngineHarness(imageBytes: 4 << 20, policy: policy)
        for g in 0..<16 { h.fill(gref: UInt32(g), seed: UInt64(g) + 1) }
        return h
    }

    func write(_ id: UInt64) -> clibaio_blkif_request {
        BlkifRequest.write(id: id, sector: id * 8, segments: [BlkifSegment(gref: UInt32(id % 16))])
    }

    @Test func nospaceHoldsAndResumeResubmitsInOrder() throws {
        let h = try harness(FailurePolicy(onNospace: .pause))
        h.engine.faults.completionRules = [.init(target: .write, fault: .errno(ENOSPC), skip: 1, count: 2)]
        h.submit((1...4).map(write))
        #expect(h.waitQuiescent())
        #expect(h.engine.state == .paused(.nospace))
        #expect(h.engine.held == 2)
        #expect(h.responses.count == 2 && h.responses.allSatisfy { $0.status == 0 })
        #expect(h.engine.ioStatus == .nospace)
        #expect(h.engine.counters.invariantHolds)
        // Requests published while paused stay in the ring.
        h.submit([write(5)])
        #expect(h.engine.requestConsumerIndex == 4)
        let r = h.engine.resume(failHeld: false)
        #expect(r.resubmitted == 2 && r.failed == 0)
        #expect(h.run(untilResponses: 5))
        #expect(h.responses.allSatisfy { $0.status == 0 })
        #expect(h.engine.ioStatus == .ok && h.engine.state == .running)
        let c = h.engine.counters
        #expect(c.resubmittedRequests == 2 && c.nospaceErrors == 2 && c.writeErrors == 2 && c.held == 0)
        #expect(c.invariantHolds)
        let actions = h.events.compactMap { e -> FailureAction? in
            if case .ioError(_, _, let a, _) = e { a } else { nil }
        }
        #expect(actions == [.pause, .pause])
        #expect(h.events.contains(.stateChanged(.paused(.nospace))))
    }

    @Test func failHeldAnswersErrorWithoutCountingNewErrors() throws {
        let h = try harness(FailurePolicy(onError: .pause))
        h.engine.faults.completionRules = [.init(target: .write, fault: .errno(EIO))]
        h.submit([write(1)])
        #expect(h.waitQuiescent())
        #expect(h.engine.state == .paused(.ioError))
        let r = h.engine.resume(failHeld: true)
        #expect(r.failed == 1 && r.resubmitted == 0)
        h.collect()
        #expect(h.status(of: 1) == -1)
        #expect(h.engine.counters.writeErrors == 1 && h.engine.counters.responsesError == 1)
    }

    /// An `io-error` pause: a `nospace` one could end by auto-resume first, whenever another
    /// test frees space on the shared /var/tmp between the two ticks.
    @Test func pauseTimeoutFailsHeldAndReturnsToRunning() throws {
        let h = try harness(FailurePolicy(onError: .pause, pauseTimeoutSeconds: 1))
        h.engine.faults.completionRules = [.init(target: .write, fault: .errno(EIO))]
        h.submit([write(1)])
        #expect(h.waitQuiescent())
        h.engine.tick()
        #expect(h.engine.state.isPaused)
        h.engine.tick(nowNanos: MonotonicClock.nanoseconds() + 1_100_000_000)
        h.collect()
        #expect(h.status(of: 1) == -1)
        #expect(h.engine.state == .running)
        #expect(h.engine.ioStatus == .failed)  // stays until a resume
    }

    @Test func secondFailureWhilePausedIsHeldToo() throws {
        let h = try harness(FailurePolicy(onNospace: .pause, onError: .pause))
        h.engine.faults.completionRules = [
            .init(target: .write, fault: .errno(ENOSPC)), .init(target: .write, fault: .errno(EIO)),
        ]
        h.submit([write(1), write(2)])
        #expect(h.waitQuiescent())
        #expect(h.engine.state == .paused(.nospace))  // the first reason stays
        #expect(h.engine.held == 2)
        _ = h.engine.resume(failHeld: false)
        #expect(h.run(untilResponses: 2))
        #expect(h.responses.map(\.id) == [1, 2])
    }

    @Test func operatorPauseStopsConsumingUntilResume() throws {
        let h = try harness(FailurePolicy())
        h.submit([write(1)])
        h.engine.pause()
        #expect(h.engine.state == .paused(.operatorRequest))
        #expect(h.waitQuiescent())
        h.submit([write(2), write(3)])
        #expect(h.responses.count == 1)
        h.engine.tick(nowNanos: MonotonicClock.nanoseconds() + 3_600_000_000_000)
        #expect(h.engine.state == .paused(.operatorRequest))  // no timeout, no auto-resume
        _ = h.engine.resume(failHeld: false)
        #expect(h.run(untilResponses: 3))
    }

    @Test func detachAnswersHeldRequestsError() throws {
        let h = try harness(FailurePolicy(onNospace: .pause))
        h.engine.faults.completionRules = [.init(target: .write, fault: .errno(ENOSPC))]
        h.submit([write(1), write(2)])
        #expect(h.waitQuiescent())
        #expect(h.engine.held == 1)
        h.engine.beginDetach()
        #expect(h.waitDrained())
        _ = h.finishDetach()
        h.collect()
        #expect(h.status(of: 1) == -1 && h.status(of: 2) == 0)
        #expect(h.engine.counters.held == 0 && h.engine.counters.invariantHolds)
    }

    @Test func barrierWaitsForHeldRequests() throws {
        let h = try harness(FailurePolicy(onNospace: .pause))
        h.engine.faults.completionRules = [.init(target: .write, fault: .errno(ENOSPC))]
        h.submit([write(1), BlkifRequest.barrier(id: 2)])
        #expect(h.waitQuiescent())  // nothing in the kernel: the barrier waits for a decision
        #expect(!h.engine.isDrained)
        #expect(h.responses.isEmpty)
        _ = h.engine.resume(failHeld: false)
        #expect(h.run(untilResponses: 2))
        #expect(h.responses.map(\.id) == [1, 2])
    }
}

extension PolicyTests {
    /// A held DISCARD that fails again on resume starts a new pause instead of being stranded.
    @Test func resubmittedDiscardFailingAgainPausesAgain() throws {
        let h = try harness(FailurePolicy(onError: .pause))
        h.engine.faults.discardErrnos = [EIO, EIO]
        h.submit([BlkifRequest.discard(id: 1, sector: 0, sectors: 8)])
        #expect(h.engine.state == .paused(.ioError))
        #expect(h.engine.held == 1)
        _ = h.engine.resume(failHeld: false)
        #expect(h.engine.state == .paused(.ioError))
        #expect(h.engine.held == 1)
        #expect(h.events.filter { $0 == .stateChanged(.paused(.ioError)) }.count == 2)
        _ = h.engine.resume(failHeld: false)
        h.collect()
        #expect(h.status(of: 1) == 0)
        #expect(h.engine.counters.discardErrors == 2 && h.engine.counters.resubmittedRequests == 2)
        #expect(h.engine.counters.invariantHolds)
    }

    /// A write held by `pause` and resubmitted after the image shrank below it is answered ERROR
    /// and does not grow the file back.
    @Test func heldWriteBeyondAShrunkEndIsAnsweredErrorOnResume() throws {
        let h = try harness(FailurePolicy(onNospace: .pause))
        h.engine.faults.completionRules = [.init(target: .write, fault: .errno(ENOSPC))]
        let lastBlock = UInt64(4 << 20) / 4096 - 1
        h.submit([BlkifRequest.write(id: 1, sector: lastBlock * 8, segments: [BlkifSegment(gref: 0)])])
        #expect(h.waitQuiescent())
        #expect(h.engine.held == 1)
        #expect(truncate(h.imagePath, 1 << 20) == 0)
        h.engine.updateGeometry(sectors: (1 << 20) / 512)
        let r = h.engine.resume(failHeld: false)
        #expect(r.resubmitted == 1)
        #expect(h.run(untilResponses: 1))
        #expect(h.status(of: 1) == -1)
        var st = stat()
        #expect(stat(h.imagePath, &st) == 0 && st.st_size == 1 << 20)
        #expect(h.engine.counters.invariantHolds && h.engine.isDrained)
    }

    /// An operator `pause` during a `nospace` pause holds: neither the pause timeout nor
    /// auto-resume ends it (§6.3), only `resume`.
    @Test func operatorPauseDuringANospacePauseHoldsUntilResume() throws {
        let h = try harness(FailurePolicy(onNospace: .pause, pauseTimeoutSeconds: 1))
        h.engine.faults.completionRules = [.init(target: .write, fault: .errno(ENOSPC))]
        h.submit([write(1)])
        #expect(h.waitQuiescent())
        #expect(h.engine.state == .paused(.nospace) && h.engine.held == 1)
        h.engine.pause()
        h.engine.tick(nowNanos: MonotonicClock.nanoseconds() + 3_600_000_000_000)
        #expect(h.engine.state == .paused(.nospace) && h.engine.held == 1, "the timeout ended an operator's pause")
        #expect(h.responses.isEmpty)
        #expect(h.engine.resume(failHeld: false).resubmitted == 1)
        #expect(h.run(untilResponses: 1) && h.status(of: 1) == 0)
    }

    /// A pause timeout near UInt64.max seconds is a long wait, not an overflow trap.
    @Test func hugePauseTimeoutDoesNotOverflow() throws {
        let h = try harness(FailurePolicy(onError: .pause, pauseTimeoutSeconds: .max))
        h.engine.faults.completionRules = [.init(target: .write, fault: .errno(EIO))]
        h.submit([write(1)])
        #expect(h.waitQuiescent())
        h.engine.tick(nowNanos: MonotonicClock.nanoseconds() + 3_600_000_000_000)
        #expect(h.engine.state == .paused(.ioError) && h.engine.held == 1)
    }
}
