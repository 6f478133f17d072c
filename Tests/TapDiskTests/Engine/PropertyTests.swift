import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// Thousands of random requests (a third of the READs and WRITEs INDIRECT) under random faults:
/// every id is answered exactly once with its operation (an INDIRECT's indirect_op) echoed, no failed transfer is answered OKAY, OKAY data is really on disk, and the
/// counters reconcile with what the seam injected.
@Suite struct PropertyTests {
    static let blocks = 2048  // 8 MiB of 4 KiB blocks

    enum Expect: Equatable {
        case undefined
        case zeros
        case content(UInt64)
    }

    @Test(arguments: [(UInt64(1), FailureAction.report), (2, .report), (3, .pause), (4, .pause)])
    func randomRequestsUnderRandomFaults(seed: UInt64, action: FailureAction) throws {
        let h = try EngineHarness(
            imageBytes: Self.blocks * 4096, policy: FailurePolicy(onNospace: action, onError: action), pageOrder: 2,
            dataPages: 512)
        var rf = FaultInjector.RandomFaults(seed: seed)
        rf.submitEagainPerMille = 40
        rf.submitPartialPerMille = 60
        rf.shortPerMille = 80
        rf.zeroPerMille = 15
        rf.eioPerMille = 25
        rf.enospcPerMille = 25
        h.engine.faults.random = rf
        var rng = SplitMix(seed: seed)
        var model = [Expect](repeating: .zeros, count: Self.blocks)
        var nextID: UInt64 = 1
        var invalid = 0
        var answered = Set<UInt64>()
        var okayWrites = 0
        var indirectRequests = 0

        struct Pending {
            var op: UInt8
            var firstBlock: Int
            var blockCount: Int
            var grefs: [UInt32]
            var hashes: [UInt64]
        }

        for _ in 0..<60 {
            var used = [Bool](repeating: false, count: Self.blocks)
            var pending: [UInt64: Pending] = [:]
            var gref: UInt32 = 0
            var batch: [clibaio_blkif_request] = []
            for _ in 0..<40 {
                let id = nextID
                nextID += 1
                let roll = rng.next() % 100
                // A third of the READs, WRITEs and invalid requests are INDIRECT, with up to 24
                // segments; their descriptors take one more data page.
                let indirect = (roll < 75 || roll >= 94) && rng.next() % 3 == 0
                let count = Int(1 + rng.next() % (indirect ? 24 : 11))
                let start = Int(rng.next() % UInt64(Self.blocks - count))
                if (start..<(start + count)).contains(where: { used[$0] }) { continue }
                if Int(gref) + count + 1 > 512 { continue }
                for b in start..<(start + count) { used[b] = true }
                let grefs = (0..<count).map { gref + UInt32($0) }
                let segs = grefs.map { BlkifSegment(gref: $0) }
                func readOrWrite(_ write: Bool) -> clibaio_blkif_request {
                    if indirect { indirectRequests += 1 }
                    return h.frontend.dataRequest(
                        write: write, id: id, sector: UInt64(start) * 8, segments: segs,
                        descriptorPage: indirect ? gref + UInt32(count) : nil)
                }
                switch roll {
                case 0..<35:
                    batch.append(readOrWrite(false))
                    pending[id] = Pending(op: 0, firstBlock: start, blockCount: count, grefs: grefs, hashes: [])
                    gref += UInt32(count + (indirect ? 1 : 0))
                case 35..<75:
                    var hashes: [UInt64] = []
                    for g in grefs {
                        h.fill(gref: g, seed: rng.next())
                        hashes.append(BlockHash.of(h.frontend.page(g), 4096))
                    }
                    batch.append(readOrWrite(true))
                    pending[id] = Pending(op: 1, firstBlock: start, blockCount: count, grefs: grefs, hashes: hashes)
                    gref += UInt32(count + (indirect ? 1 : 0))
                case 75..<83:
                    batch.append(BlkifRequest.flush(id: id))
                    pending[id] = Pending(op: 3, firstBlock: 0, blockCount: 0, grefs: [], hashes: [])
                case 83..<86:
                    batch.append(BlkifRequest.barrier(id: id))
                    pending[id] = Pending(op: 2, firstBlock: 0, blockCount: 0, grefs: [], hashes: [])
                case 86..<94:
                    batch.append(BlkifRequest.discard(id: id, sector: UInt64(start) * 8, sectors: UInt64(count) * 8))
                    pending[id] = Pending(op: 5, firstBlock: start, blockCount: count, grefs: [], hashes: [])
                default:
                    if indirect {
                        // 257 segments: ERROR, answered with the indirect_op (READ).
                        indirectRequests += 1
                        batch.append(
                            BlkifRequest.indirect(
                                indirectOperation: 0, id: id, sector: UInt64(start) * 8, nrSegments: 257,
                                indirectGrefs: [gref]))
                    } else {
                        batch.append(BlkifRequest.read(id: id, sector: UInt64(Self.blocks) * 8, segments: segs))
                    }
                    pending[id] = Pending(op: 0, firstBlock: -1, blockCount: 0, grefs: [], hashes: [])
                    invalid += 1
                }
            }
            let before = h.responses.count
            h.submit(batch)
            // Run until the batch is answered, resuming (or failing) held requests when paused.
            var spins = 0
            while h.responses.count < before + batch.count && spins < 2_000 {
                spins += 1
                h.step()
                if h.engine.state.isPaused && h.engine.isQuiescent {
                    _ = h.engine.resume(failHeld: rng.next() % 4 == 0)
                    h.collect()
                }
            }
            #expect(
                h.responses.count == before + batch.count,
                "state \(h.engine.state) inflight \(h.engine.inFlight) held \(h.engine.held) backoff \(h.engine.submitBackoff) c \(h.engine.counters)"
            )
            if h.responses.count != before + batch.count { return }
            for r in h.responses[before...] {
                #expect(answered.insert(r.id).inserted, "id \(r.id) answered twice")
                guard let p = pending[r.id] else {
                    Issue.record("unknown id \(r.id)")
                    continue
                }
                #expect(r.operation == p.op)
                #expect(r.paddingIsZero)
                #expect(r.status == 0 || r.status == -1)
                let blocks = p.firstBlock..<(p.firstBlock + p.blockCount)
                switch (p.op, r.status) {
                case (1, 0):
                    okayWrites += 1
                    for (i, b) in blocks.enumerated() { model[b] = .content(p.hashes[i]) }
                case (1, _):
                    for b in blocks { model[b] = .undefined }
                case (5, 0):
                    for b in blocks { model[b] = .zeros }
                case (5, _):
                    for b in blocks { model[b] = .undefined }
                case (0, 0) where p.firstBlock >= 0:
                    for (i, b) in blocks.enumerated() {
                        let got = BlockHash.of(h.frontend.page(p.grefs[i]), 4096)
                        switch model[b] {
                        case .content(let want): #expect(got == want, "read of block \(b)")
                        case .zeros: #expect(got == BlockHash.zeros, "read of zero block \(b)")
                        case .undefined: break
                        }
                    }
                default: break
                }
            }
            #expect(h.engine.counters.invariantHolds)
        }
        // Everything answered OKAY is really in the image.
        for b in 0..<Self.blocks {
            let bytes = h.readImage(offset: b * 4096, count: 4096)
            let got = bytes.withUnsafeBytes { BlockHash.of($0.baseAddress!, 4096) }
            switch model[b] {
            case .content(let want): #expect(got == want, "image block \(b)")
            case .zeros: #expect(got == BlockHash.zeros, "image block \(b) should be zeros")
            case .undefined: break
            }
        }
        let c = h.engine.counters
        let f = h.engine.faults
        #expect(answered.count == Int(nextID - 1) - (Int(nextID - 1) - answered.count))
        #expect(c.consumed == c.responses && c.inFlight == 0 && c.held == 0)
        // Drained: every request of each operation was answered, so recorded once in its histogram.
        let recorded = LatencyHistograms.Operation.allCases.map { h.engine.latencySnapshot($0).count }
        #expect(recorded == [c.readRequests, c.writeRequests, c.flushRequests, c.barrierRequests, c.discardRequests])
        #expect(c.invalidRequests == UInt64(invalid))
        #expect(c.shortCompletions == UInt64(f.injectedShort))
        // Each injected errno or zero-byte completion fails exactly one attempt.
        #expect(
            c.readErrors + c.writeErrors + c.discardErrors + c.flushErrors == UInt64(f.injectedErrno + f.injectedZero))
        if action == .report {
            #expect(c.responsesError == c.invalidRequests + UInt64(f.injectedErrno + f.injectedZero))
        } else {
            #expect(c.resubmittedRequests > 0)
        }
        #expect(f.injectedShort > 20 && f.injectedErrno > 20 && f.injectedSubmitFaults > 10)
        #expect(okayWrites > 300)
        #expect(indirectRequests > 300)
    }
}
