import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// Every AIO error path, made to happen through the seam in `AIOContext`.
@Suite struct FaultInjectionTests {
    func harness(_ policy: FailurePolicy = FailurePolicy()) throws -> EngineHarness {
        let h = try EngineHarness(imageBytes: 4 << 20, policy: policy)
        for g in 0..<16 { h.fill(gref: UInt32(g), seed: UInt64(g) + 1) }
        return h
    }

    func write(_ id: UInt64, pages: Int = 2) -> clibaio_blkif_request {
        BlkifRequest.write(
            id: id, sector: id * 16, segments: (0..<pages).map { BlkifSegment(gref: UInt32(Int(id) % 8 + $0)) })
    }

    @Test func shortCompletionIsResubmittedAndLandsCompletely() throws {
        let h = try harness()
        h.engine.faults.completionRules = [.init(target: .write, fault: .short, count: 3)]
        h.submit([write(1, pages: 4)])
        #expect(h.run(untilResponses: 1))
        #expect(h.status(of: 1) == 0)
        #expect(h.engine.counters.shortCompletions == 3)
        var expected: [UInt8] = []
        for g in 1...4 { expected += Array(UnsafeRawBufferPointer(start: h.frontend.page(UInt32(g)), count: 4096)) }
        #expect(h.readImage(offset: 16 * 512, count: 4 * 4096) == expected)
    }

    @Test func shortReadIsResubmitted() throws {
        let h = try harness()
        let data = Pattern.bytes(count: 8192, seed: 3)
        h.writeImage(offset: 0, bytes: data)
        h.engine.faults.completionRules = [.init(target: .read, fault: .short, count: 1)]
        h.frontend.page(10).initializeMemory(as: UInt8.self, repeating: 0, count: 8192)
        h.submit([BlkifRequest.read(id: 9, sector: 0, segments: [BlkifSegment(gref: 10), BlkifSegment(gref: 11)])])
        #expect(h.run(untilResponses: 1))
        #expect(h.status(of: 9) == 0)
        #expect(Array(UnsafeRawBufferPointer(start: h.frontend.page(10), count: 8192)) == data)
        #expect(h.engine.counters.shortCompletions == 1)
    }

    @Test(arguments: [
        (FaultInjector.CompletionFault.zero, "EIO", false),
        (.errno(EIO), "EIO", false),
        (.errno(ENOSPC), "ENOSPC", true),
        (.errno(EDQUOT), "EDQUOT", true),
    ])
    func failedWriteIsAnsweredError(fault: FaultInjector.CompletionFault, name: String, nospace: Bool) throws {
        let h = try harness()
        h.engine.faults.completionRules = [.init(target: .write, fault: fault, skip: 1, count: 1)]
        h.submit([write(1), write(2), write(3)])
        #expect(h.run(untilResponses: 3))
        let statuses = [1, 2, 3].map { h.status(of: UInt64($0)) }
        #expect(statuses.filter { $0 == -1 }.count == 1)
        #expect(statuses.filter { $0 == 0 }.count == 2)
        let c = h.engine.counters
        #expect(c.writeErrors == 1 && c.responsesError == 1 && c.responsesOkay == 2)
        #expect(c.nospaceErrors == (nospace ? 1 : 0))
        #expect(c.errnoErrors.named.map(\.0) == [name] && c.errnoErrors.named.map(\.1) == [1])
        #expect(h.engine.ioStatus == (nospace ? .nospace : .failed))
        let ev = h.events.compactMap { e -> (String, String, FailureAction)? in
            if case .ioError(let op, let errno, let action, _) = e { return (op, errno.name, action) }
            return nil
        }
        #expect(ev.count == 1 && ev[0].0 == "write" && ev[0].1 == name && ev[0].2 == .report)
        #expect(c.invariantHolds)
    }

    @Test func failedReadCountsAsReadError() throws {
        let h = try harness()
        h.engine.faults.completionRules = [.init(target: .read, fault: .errno(EIO))]
        h.submit([BlkifRequest.read(id: 1, sector: 0, segments: [BlkifSegment(gref: 0)])])
        #expect(h.run(untilResponses: 1))
        #expect(h.status(of: 1) == -1)
        #expect(h.engine.counters.readErrors == 1 && h.engine.counters.readBytes == 0)
    }

    @Test func shortThenFailedRemainderFailsTheWholeRequest() throws {
        let h = try harness()
        h.engine.faults.completionRules = [
            .init(target: .write, fault: .short, count: 1), .init(target: .write, fault: .errno(ENOSPC), count: 1),
        ]
        h.submit([write(1, pages: 4)])
        #expect(h.run(untilResponses: 1))
        #expect(h.status(of: 1) == -1)
        #expect(h.engine.counters.shortCompletions == 1 && h.engine.counters.nospaceErrors == 1)
    }

    @Test func submitEagainIsRetriedWithoutLossOrDuplication() throws {
        let h = try harness()
        h.engine.faults.submitFaults = [.eagain, .eagain, .eagain]
        h.submit((1...8).map { write($0) })
        #expect(h.run(untilResponses: 8))
        #expect(h.responses.count == 8 && Set(h.responses.map(\.id)).count == 8)
        #expect(h.responses.allSatisfy { $0.status == 0 })
        #expect(h.engine.faults.injectedSubmitFaults == 3)
    }

    @Test func partialSubmitKeepsTheRestInOrder() throws {
        let h = try harness()
        h.engine.faults.submitFaults = [.partial(3), .partial(1), .partial(2)]
        h.submit((1...10).map { write($0) })
        #expect(h.run(untilResponses: 10))
        #expect(Set(h.responses.map(\.id)) == Set(1...10))
        #expect(h.responses.count == 10 && h.responses.allSatisfy { $0.status == 0 })
        for id in 1...10 {
            let g = UInt32(id % 8)
            var expected = Array(UnsafeRawBufferPointer(start: h.frontend.page(g), count: 4096))
            expected += Array(UnsafeRawBufferPointer(start: h.frontend.page(g + 1), count: 4096))
            #expect(h.readImage(offset: id * 16 * 512, count: 8192) == expected)
        }
    }

    @Test func submitRejectingFirstIocbFailsOnlyThatRequest() throws {
        let h = try harness()
        h.engine.faults.submitFaults = [.errno(EBADF)]
        h.submit((1...4).map { write($0) })
        #expect(h.run(untilResponses: 4))
        #expect(h.status(of: 1) == -1)
        #expect([2, 3, 4].allSatisfy { h.status(of: UInt64($0)) == 0 })
    }

    /// §5.3: a failed sync fails that FLUSH, and every later FLUSH/BARRIER, for good.
    @Test func failedSyncIsSticky() throws {
        let h = try harness()
        h.engine.faults.completionRules = [.init(target: .sync, fault: .errno(EIO))]
        h.submit([write(1), BlkifRequest.flush(id: 2)])
        #expect(h.run(untilResponses: 2))
        #expect(h.status(of: 2) == -1)
        #expect(h.engine.syncFailed && h.engine.ioStatus == .failed)
        h.submit([
            BlkifRequest.flush(id: 3), BlkifRequest.barrier(id: 4), write(5),
            BlkifRequest.flush(id: 6, sector: 0, segments: [BlkifSegment(gref: 0)]),
        ])
        #expect(h.run(untilResponses: 6))
        #expect(h.status(of: 3) == -1 && h.status(of: 4) == -1 && h.status(of: 6) == -1)
        #expect(h.status(of: 5) == 0)
        #expect(h.engine.counters.flushErrors == 4)
        let flushEvents = h.events.filter { if case .ioError("flush", _, _, _) = $0 { true } else { false } }
        #expect(flushEvents.count == 4)
        #expect(h.engine.ioStatus == .failed)
    }

    @Test func barrierWithFailingDataOrSyncIsError() throws {
        let h = try harness()
        h.engine.faults.completionRules = [.init(target: .write, fault: .errno(EIO))]
        h.submit([BlkifRequest.barrier(id: 1, sector: 0, segments: [BlkifSegment(gref: 0)])])
        #expect(h.run(untilResponses: 1))
        #expect(h.status(of: 1) == -1)
        #expect(h.engine.counters.writeErrors == 1)
        h.engine.faults.completionRules = [.init(target: .sync, fault: .errno(EIO))]
        h.submit([BlkifRequest.barrier(id: 2, sector: 0, segments: [BlkifSegment(gref: 0)]), write(3)])
        #expect(h.run(untilResponses: 3))
        #expect(h.status(of: 2) == -1 && h.status(of: 3) == 0)
        // The write consumed after the barrier was answered after it.
        #expect(h.responses.map(\.id).suffix(2) == [2, 3])
    }

    @Test func discardFailures() throws {
        let h = try harness()
        h.engine.faults.discardErrnos = [EOPNOTSUPP, EIO, ENOSPC]
        h.submit((1...3).map { BlkifRequest.discard(id: $0, sector: $0 * 8, sectors: 8) })
        #expect(h.run(untilResponses: 3))
        #expect(h.status(of: 1) == -2 && h.status(of: 2) == -1 && h.status(of: 3) == -1)
        let c = h.engine.counters
        #expect(c.discardErrors == 2 && c.nospaceErrors == 1 && c.responsesNotSupported == 1)
    }
}
