import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// The auto-resume baseline (PROTOCOL.md §5.2) when the free space sampled at the start of a
/// `nospace` pause is more than the filesystem settles at: writes that were in flight then take
/// what was free after the sample. A real 16 MiB ext4 and the fault seam make that happen every
/// time: the first write is reported ENOSPC while 1 MiB is still free, and `io_submit` refuses
/// the other 31 until after that failure was reaped, so they use the free space up after the
/// pause began. Freeing 1 MiB then holds the held writes, but not the first sample plus them.
@Suite(.serialized, .enabled(if: LoopFilesystem.isRoot, "needs root for a loop-mounted ext4"))
struct AutoResumeBaselineTests {
    static let pages = 11
    static let writes = 32

    #if TAPDISK_FAULT_INJECTION
        @Test func spaceTakenAfterThePauseBeganDoesNotKeepTheDiskPaused() throws {
            let fs = try LoopFilesystem(sizeMiB: 16)
            defer { fs.cleanup() }
            try fs.makeFiller(name: "tenant", bytes: 1 << 20)
            try fs.fill(leaving: 1 << 20)
            let image = try RealENOSPCTests.makeSparseImage(fs.path("disk.img"), bytes: 64 << 20)
            let policy = FailurePolicy(onNospace: .pause, onError: .report, pauseTimeoutSeconds: 0)
            let h = try EngineHarness(
                imagePath: image, policy: policy, pageOrder: 2, dataPages: Self.writes * Self.pages)
            h.engine.faults.completionRules = [.init(target: .write, fault: .errno(ENOSPC), count: 1)]
            h.engine.faults.submitFaults = [.partial(1)] + Array(repeating: .eagain, count: 40)

            var requests: [clibaio_blkif_request] = []
            for i in 0..<Self.writes {
                let gref = UInt32(i * Self.pages)
                for p in 0..<Self.pages { h.fill(gref: gref + UInt32(p), seed: UInt64(i * 64 + p)) }
                let segments = (0..<Self.pages).map { BlkifSegment(gref: gref + UInt32($0)) }
                requests.append(
                    BlkifRequest.write(id: UInt64(i), sector: UInt64(i * Self.pages * 8), segments: segments))
            }
            h.submit(requests)
            #expect(h.run(until: { h.engine.state == .paused(.nospace) && h.engine.isQuiescent }))
            let sample = try #require(h.engine.pauseFreeBytes)
            let settled = try fs.freeBytes()
            let heldBytes = UInt64(h.engine.held * Self.pages * 4096)
            #expect(h.engine.held > 1, "real ENOSPC after the injected one")
            #expect(heldBytes < 1 << 20, "the freed 1 MiB holds the held writes")

            // The operator deletes the 1 MiB tenant file.
            fs.removeFiller(name: "tenant")
            let now = try fs.freeBytes()
            #expect(now > settled + heldBytes)
            h.engine.tick()
            #expect(
                h.engine.state == .running,
                "still paused: free \(now) B, held \(heldBytes) B, settled at \(settled) B, baseline \(sample) B")
            if h.engine.state != .running { _ = h.engine.resume(failHeld: false) }
            #expect(h.run(untilResponses: Self.writes))
            #expect((0..<Self.writes).allSatisfy { h.status(of: UInt64($0)) == 0 }, "every write answered OKAY once")
            #expect(h.engine.counters.invariantHolds && h.engine.counters.responsesError == 0)
        }

        /// §5.3: a `pause` during a `nospace` pause makes it the operator's. Space that would
        /// resume the disk by itself does not; only `resume` does, and the reason stays `nospace`.
        @Test func anOperatorPauseDuringANospacePauseIsNotEndedBySpace() throws {
            let fs = try LoopFilesystem(sizeMiB: 16)
            defer { fs.cleanup() }
            try fs.fill(leaving: 1 << 20)
            let image = try RealENOSPCTests.makeSparseImage(fs.path("disk.img"), bytes: 64 << 20)
            let policy = FailurePolicy(onNospace: .pause, onError: .report, pauseTimeoutSeconds: 0)
            let h = try EngineHarness(imagePath: image, policy: policy, pageOrder: 2, dataPages: Self.pages)
            h.engine.faults.completionRules = [.init(target: .write, fault: .errno(ENOSPC), count: 1)]
            for p in 0..<Self.pages { h.fill(gref: UInt32(p), seed: UInt64(p)) }
            let segments = (0..<Self.pages).map { BlkifSegment(gref: UInt32($0)) }
            h.submit([BlkifRequest.write(id: 1, sector: 0, segments: segments)])
            #expect(h.run(until: { h.engine.state == .paused(.nospace) && h.engine.isQuiescent }))
            #expect(h.engine.held == 1)
            h.engine.pause()
            fs.removeFiller()
            let free = try fs.freeBytes()
            #expect(free > (8 << 20), "\(free) B free: far more than the held write needs")
            h.engine.tick()
            #expect(h.engine.state == .paused(.nospace) && h.engine.held == 1, "free space ended an operator's pause")
            #expect(h.responses.isEmpty)
            #expect(h.engine.resume(failHeld: false).resubmitted == 1)
            #expect(h.run(untilResponses: 1) && h.status(of: 1) == 0)
            #expect(h.engine.state == .running)
        }
    #endif
}
