import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The real daemon process against a randomized, pipelined request stream (a third of the READs
/// and WRITEs INDIRECT) under random faults
/// (`TAPDISK_FAULTS=random:…`, debug builds), checked against a shadow model of the disk: every
/// id answered exactly once with its operation echoed, every OKAY read returns what the model
/// says, every OKAY write is in the image after detach, and no request waits forever. The
/// frontend reads responses only when its notify eventfd fires.
@Suite struct DaemonPropertyTests {
    static let blocks = 2048  // 8 MiB of 4 KiB blocks
    static let dataPages = 512
    static let total = 2500

    enum Expect: Equatable {
        case undefined
        case zeros
        case content(UInt64)
    }

    struct Pending {
        var op: UInt8
        var firstBlock: Int
        var blockCount: Int
        var grefs: [UInt32]
        var hashes: [UInt64]
    }

    @Test(arguments: [(UInt64(21), "report", "0"), (22, "pause", "0"), (23, "report", "50"), (24, "pause", "50")])
    func randomStreamAgainstShadowModel(seed: UInt64, policy: String, pollUs: String) throws {
        try run(seed: seed, policy: policy, pollUs: pollUs)
    }

    /// The same stream under QoS limits (issue 17 §2): requests held back by a limit are still
    /// answered exactly once, in the same way, and the limit did hold some back.
    /// No burst: the iops bucket then holds a tenth of a second (40 requests), so any 40 answered
    /// within 0.1 s meet the limit, however slow the host. (A 3,000-request burst with 1,500/s
    /// held nothing back in a loaded whole-suite run: 2,500 requests never filled it.) Bursts are
    /// checked with an injected clock in `ThrottleTests`.
    @Test func randomStreamUnderALimit() throws {
        try run(seed: 25, policy: "pause", pollUs: "0", limit: "iops-total=400,bps-total=24M")
    }

    /// One `scripts/soak.sh` iteration: the seed picks the policy and the polling too.
    @Test(Soak.enabled) func soakIteration() throws {
        let seed = try #require(Soak.seed)
        try run(seed: seed, policy: seed & 1 == 0 ? "report" : "pause", pollUs: seed & 2 == 0 ? "0" : "50")
    }

    func run(seed: UInt64, policy: String, pollUs: String, limit: String? = nil) throws {
        var environment = ProcessInfo.processInfo.environment
        environment["TAPDISK_FAULTS"] = "random:\(seed):eagain=30:partial=50:short=60:zero=10:eio=20:enospc=20"
        let image = try DaemonTest.image(bytes: Self.blocks * 4096)
        defer { unlink(image) }
        let daemon = try DaemonProcess(
            image: image,
            arguments: ["--on-nospace", policy, "--on-error", policy, "--pause-timeout", "0", "--poll-us", pollUs]
                + (limit.map { ["--limit", $0] } ?? []),
            environment: environment)
        let disk = try RemoteDisk(socketPath: daemon.socketPath, pageOrder: 2, dataPages: Self.dataPages)
        let frontend = disk.frontend

        var rng = SplitMix(seed: seed)
        var model = [Expect](repeating: .zeros, count: Self.blocks)
        var busy = [Bool](repeating: false, count: Self.blocks)
        var freeGrefs = (0..<UInt32(Self.dataPages)).reversed().map { $0 }
        var pending: [UInt64: Pending] = [:]
        var answered = Set<UInt64>()
        var sent = 0
        var invalid = 0
        var okayWrites = 0
        var okayReads = 0
        var resumes = 0
        var quietWaits = 0
        var unnotified = 0
        var indirectSent = 0
        var lastProgress = MonotonicClock.nanoseconds()
        var firstBatchDigest = Soak.digestBasis
        var firstBatch = true

        func makeRequest(id: UInt64) -> clibaio_blkif_request? {
            let roll = rng.next() % 100
            if roll >= 75 && roll < 86 {
                let flush = roll < 83
                pending[id] = Pending(op: flush ? 3 : 2, firstBlock: 0, blockCount: 0, grefs: [], hashes: [])
                return flush ? BlkifRequest.flush(id: id) : BlkifRequest.barrier(id: id)
            }
            // A third of the READs, WRITEs and invalid requests are INDIRECT, with up to 24 segments
            // and one more data page for their descriptors.
            let indirect = (roll < 75 || roll >= 94) && rng.next() % 3 == 0
            let count = Int(1 + rng.next() % (indirect ? 24 : 11))
            let start = Int(rng.next() % UInt64(Self.blocks - count))
            if (start..<(start + count)).contains(where: { busy[$0] }) { return nil }
            if roll >= 94 {
                invalid += 1
                pending[id] = Pending(op: 0, firstBlock: -1, blockCount: 0, grefs: [], hashes: [])
                if indirect {
                    // 257 segments: ERROR, answered with the indirect_op (READ).
                    indirectSent += 1
                    return BlkifRequest.indirect(
                        indirectOperation: 0, id: id, sector: 0, nrSegments: 257, indirectGrefs: [0])
                }
                return BlkifRequest.read(id: id, sector: UInt64(Self.blocks) * 8, segments: [BlkifSegment(gref: 0)])
            }
            for b in start..<(start + count) { busy[b] = true }
            if roll >= 86 {
                pending[id] = Pending(op: 5, firstBlock: start, blockCount: count, grefs: [], hashes: [])
                return BlkifRequest.discard(id: id, sector: UInt64(start) * 8, sectors: UInt64(count) * 8)
            }
            let grefs = (0..<count).map { _ in freeGrefs.removeLast() }
            let segments = grefs.map { BlkifSegment(gref: $0) }
            // The descriptor page goes last in `grefs` of the pending entry, so it is freed with
            // the data pages; reads check only the first `count`.
            let descriptorPage = indirect ? freeGrefs.removeLast() : 0
            let held = indirect ? grefs + [descriptorPage] : grefs
            if indirect { indirectSent += 1 }
            func readOrWrite(_ write: Bool) -> clibaio_blkif_request {
                frontend.dataRequest(
                    write: write, id: id, sector: UInt64(start) * 8, segments: segments,
                    descriptorPage: indirect ? descriptorPage : nil)
            }
            if roll < 35 {
                pending[id] = Pending(op: 0, firstBlock: start, blockCount: count, grefs: held, hashes: [])
                return readOrWrite(false)
            }
            var hashes: [UInt64] = []
            for g in grefs {
                Pattern.fill(frontend.page(g), bytes: 4096, seed: rng.next())
                hashes.append(BlockHash.of(frontend.page(g), 4096))
            }
            pending[id] = Pending(op: 1, firstBlock: start, blockCount: count, grefs: held, hashes: hashes)
            return readOrWrite(true)
        }

        func absorb(_ r: FrontendRing.Response) {
            guard answered.insert(r.id).inserted else {
                Issue.record("id \(r.id) answered twice")
                return
            }
            guard let p = pending.removeValue(forKey: r.id) else {
                Issue.record("unknown id \(r.id)")
                return
            }
            #expect(r.operation == p.op || (p.op == 0 && p.firstBlock < 0))
            #expect(r.paddingIsZero)
            #expect(r.status == 0 || r.status == -1)
            let blocks = p.firstBlock..<max(p.firstBlock, p.firstBlock + p.blockCount)
            switch (p.op, r.status) {
            case (1, 0):
                okayWrites += 1
                for (i, b) in blocks.enumerated() { model[b] = .content(p.hashes[i]) }
            case (1, _), (5, -1):
                for b in blocks { model[b] = .undefined }
            case (5, 0):
                for b in blocks { model[b] = .zeros }
            case (0, 0) where p.firstBlock >= 0:
                okayReads += 1
                for (i, b) in blocks.enumerated() {
                    let got = BlockHash.of(frontend.page(p.grefs[i]), 4096)
                    switch model[b] {
                    case .content(let want): #expect(got == want, "read of block \(b)")
                    case .zeros: #expect(got == BlockHash.zeros, "read of zero block \(b)")
                    case .undefined: break
                    }
                }
            default: break
            }
            for b in blocks { busy[b] = false }
            freeGrefs.append(contentsOf: p.grefs)
        }

        while answered.count < Self.total {
            let depth = Int(1 + rng.next() % 64)
            var produced = 0
            while sent < Self.total && pending.count < depth && freeGrefs.count >= 25 && frontend.freeRequests > 0 {
                guard let request = makeRequest(id: UInt64(sent + 1)) else { break }
                if firstBatch { firstBatchDigest = withUnsafeBytes(of: request) { Soak.digest(firstBatchDigest, $0) } }
                frontend.enqueue(request)
                sent += 1
                produced += 1
            }
            if produced > 0 {
                frontend.push()
                if firstBatch {
                    print(
                        "daemon property seed \(seed): first batch \(produced) requests, digest \(String(firstBatchDigest, radix: 16))"
                    )
                    firstBatch = false
                }
            }
            if pending.isEmpty { continue }  // the blocks it drew were busy: draw again
            let waitStart = MonotonicClock.nanoseconds()
            guard disk.waitForResponses(timeoutMilliseconds: 50) else {
                Issue.record("the daemon died: \(daemon.log)")
                return
            }
            let timedOut = MonotonicClock.nanoseconds() - waitStart > 45_000_000
            var got = 0
            _ = frontend.reap { r in
                got += 1
                absorb(r)
            }
            if timedOut {
                quietWaits += 1
                if got > 0 { unnotified += 1 }
            }
            let now = MonotonicClock.nanoseconds()
            if got > 0 || produced > 0 {
                lastProgress = now
                continue
            }
            guard now - lastProgress > 100_000_000 else { continue }
            // Quiet for 0.1 s with requests outstanding: legitimate only while paused (a BARRIER
            // behind held requests stays in flight until they are resumed or failed).
            let status = try disk.control.call("status")
            if status["state"]?.stringValue == "paused" {
                if try DaemonTest.resumeIfStillPaused(disk.control, failHeld: rng.next() % 4 == 0) { resumes += 1 }
                lastProgress = now
            } else if now - lastProgress > 10_000_000_000 {
                Issue.record("\(pending.count) requests unanswered for 10 s; status \(status)")
                return
            }
        }
        let stats = try DaemonTest.expectInvariant(disk.control)
        #expect(stats["in-flight"] == 0 && stats["held"] == 0)
        #expect(stats["invalid-requests"] == UInt64(invalid))
        #expect(stats.consumed == UInt64(Self.total))
        _ = try disk.detach()
        for b in 0..<Self.blocks {
            guard case .undefined = model[b] else {
                let bytes = imageBlock(image, b)
                let got = bytes.withUnsafeBytes { BlockHash.of($0.baseAddress!, 4096) }
                let want =
                    model[b] == .zeros
                    ? BlockHash.zeros : { if case .content(let h) = model[b] { h } else { 0 } }()
                #expect(got == want, "image block \(b)")
                continue
            }
        }
        print(
            "daemon property \(policy) poll \(pollUs) µs seed \(seed): \(Self.total) requests, \(okayWrites) OKAY writes, \(okayReads) OKAY reads, \(invalid) invalid, errors \(stats["responses-error"]), short \(stats["short-completions"]), resubmitted \(stats["resubmitted-requests"]), resumes \(resumes), quiet waits \(quietWaits), unnotified \(unnotified)"
        )
        #expect(okayWrites > 200 && stats["responses-error"] > UInt64(invalid))
        #expect(stats["short-completions"] > 10)
        if policy == "pause" { #expect(stats["resubmitted-requests"] > 0) }
        #expect(indirectSent > 400)
        if limit != nil {
            let delayed = try disk.control.call("stats")["counters"]?["throttle-delayed-requests"]?.uint64Value
            #expect((delayed ?? 0) > 0, "the limit never held a request back")
        }
    }

    func imageBlock(_ path: String, _ block: Int) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 4096, off_t(block * 4096)) }
        return n == 4096 ? buf : []
    }
}
