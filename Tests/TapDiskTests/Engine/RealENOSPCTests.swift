import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// Real ENOSPC: the 2006 seed bug, scaled down. A real 16 MiB ext4 (`-m 0`)
/// on a loop device holds a 64 MiB sparse image; the in-process engine serves a frontend that
/// writes the whole disk through the ring at queue depth 32 until the filesystem really runs out.
/// No fault injection: every ERROR here is a kernel `res = -ENOSPC`.
///
/// Guarantees checked (docs/protocol.md §5.2, §5.3, §6, §8): every request answered exactly once;
/// every failure counted and reported; the counter invariant holds; and after detach, closing the
/// image and umount + mount (nothing can come from the old page cache), every write that was
/// answered OKAY reads back exactly. Failed writes' ranges are undefined and are not checked.
@Suite(.serialized, .enabled(if: LoopFilesystem.isRoot, "needs root for a loop-mounted ext4"))
struct RealENOSPCTests {
    static let imageBytes = 64 << 20
    static let blockBytes = 4096
    static let depth = 32
    static let maxPages = RingLayout.maxSegments  // 11

    // MARK: - Tests

    /// `--cache none` (O_DIRECT, the default), policy `report`, chunks in shuffled or sequential
    /// order: some writes fail with a real ENOSPC, each failure is counted and reported, and every
    /// OKAY write is durable.
    @Test(arguments: [true, false])
    func directIOReportWholeDisk(shuffled: Bool) throws {
        let out = try runReport(cache: .none, generation: shuffled ? 1 : 11, shuffled: shuffled)
        // O_DIRECT on a filesystem that is not overcommitted: the final FLUSH succeeds.
        #expect(out.flushStatus == 0)
        #expect(!out.syncFailed)
        #expect(out.ioStatus == .nospace)
    }

    /// `--cache writeback` (buffered): OKAY data is durable only after a successful FLUSH, so it
    /// is verified only then; a failed FLUSH must leave `syncFailed` and `io-status` `failed`.
    @Test(arguments: [false, true])
    func bufferedWritebackReportWholeDisk(shuffled: Bool) throws {
        let out = try runReport(cache: .writeback, generation: shuffled ? 12 : 2, shuffled: shuffled)
        if out.flushStatus == 0 {
            #expect(!out.syncFailed)
            #expect(out.ioStatus == .nospace)
        } else {
            #expect(out.syncFailed)
            #expect(out.ioStatus == .failed)
        }
    }

    /// `--cache directsync` (O_DIRECT + O_DSYNC): every OKAY write is durable on its own.
    @Test(arguments: [true, false])
    func directSyncReportWholeDisk(shuffled: Bool) throws {
        let out = try runReport(cache: .directsync, generation: shuffled ? 3 : 13, shuffled: shuffled)
        #expect(out.flushStatus == 0)
        #expect(!out.syncFailed)
        #expect(out.ioStatus == .nospace)
    }

    /// Policy `pause`: a filler file makes the filesystem fill up before the image is written;
    /// when the engine pauses with reason `nospace`, the filler is deleted and `tick()` resumes
    /// automatically (free space rose). Held writes are resubmitted and answered OKAY; no write
    /// is answered ERROR; all data verifies after remount.
    @Test(arguments: [false, true])
    func pausePolicyResumesAfterSpaceIsFreed(shuffled: Bool) throws {
        let start = MonotonicClock.nanoseconds()
        let fs = try LoopFilesystem(sizeMiB: 16)
        defer { fs.cleanup() }
        let mountPoint = fs.mountPoint
        let freeAtStart = try fs.freeBytes()
        // Written range: fits the filesystem with room to spare for the extent tree once the
        // filler is gone, but not while it is there.
        let writeBytes = 8 << 20
        let fillerBytes: UInt64 = freeAtStart - UInt64(writeBytes) + (3 << 20)
        try #require(freeAtStart > UInt64(writeBytes) + (2 << 20), "free \(freeAtStart)")
        try fs.makeFiller(bytes: fillerBytes)
        fs.syncDirectory()
        let freeWithFiller = try fs.freeBytes()
        let imagePath = try Self.makeSparseImage(fs.path("disk.img"), bytes: Self.imageBytes)

        let generation: UInt64 = shuffled ? 14 : 4
        var rng = SplitMix(seed: 0x7A9D_15C0 ^ generation)
        let chunks = Self.chunks(blocks: writeBytes / Self.blockBytes, rng: &rng, shuffled: shuffled)
        let policy = FailurePolicy(onNospace: .pause, onError: .report, pauseTimeoutSeconds: 0)
        var pauses = 0
        var fillerRemoved = false
        var freeAfterRemoval: UInt64 = 0
        var heldAtPause = 0
        var paused: [DiskState] = []
        var ioStatusAtPause: IOStatus? = nil
        var okayBytesAtPause: UInt64 = 0
        var invariantAtPause = true
        let result = try Self.drive(
            imagePath: imagePath, cache: .none, policy: policy, chunks: chunks, generation: generation, flush: true
        ) { h in
            // Called whenever nothing arrived: react to a nospace pause once I/O has settled.
            guard case .paused(let reason) = h.engine.state, h.engine.isQuiescent else { return }
            paused.append(h.engine.state)
            pauses += 1
            heldAtPause = max(heldAtPause, h.engine.held)
            invariantAtPause = invariantAtPause && h.engine.counters.invariantHolds
            if ioStatusAtPause == nil {
                ioStatusAtPause = h.engine.ioStatus
                okayBytesAtPause = h.responses.filter { $0.status == 0 }.reduce(0) {
                    $0 + UInt64(chunks[Int($1.id) - 1].bytes)
                }
            }
            if reason == .nospace, !fillerRemoved {
                fs.removeFiller()
                fillerRemoved = true
                freeAfterRemoval = (try? fs.freeBytes()) ?? 0
                h.engine.tick()  // auto-resume: f_bavail rose above the value sampled at the pause
                if h.engine.state.isPaused {
                    Issue.record("tick() did not auto-resume (free \(freeWithFiller) -> \(freeAfterRemoval))")
                    _ = h.engine.resume(failHeld: false)
                }
            } else {
                Issue.record("paused again (\(h.engine.state)) after the filler was removed; failing held requests")
                _ = h.engine.resume(failHeld: true)
            }
            h.collect()
        }
        Self.checkAnsweredOnce(result, chunks: chunks)
        let c = result.counters
        #expect(pauses >= 1, "the engine never paused: the filesystem did not fill up")
        #expect(fillerRemoved)
        #expect(paused.allSatisfy { $0 == .paused(.nospace) })
        #expect(heldAtPause > 0)
        #expect(ioStatusAtPause == .nospace)
        #expect(invariantAtPause)
        #expect(okayBytesAtPause < UInt64(writeBytes))
        #expect(c.nospaceErrors > 0)
        #expect(c.writeErrors == c.nospaceErrors)
        #expect(c.resubmittedRequests > 0)
        #expect(c.resubmittedRequests >= UInt64(heldAtPause))
        #expect(c.responsesError == 0)
        #expect(result.errorIDs.isEmpty, "writes answered ERROR: \(result.errorIDs.prefix(10))")
        #expect(result.okayIDs.count == chunks.count)
        #expect(c.held == 0 && c.inFlight == 0 && c.invariantHolds)
        #expect(result.ioStatus == .ok)
        #expect(result.finalState == .idle)
        #expect(result.stateBeforeDetach == .running)
        #expect(result.flushStatus == 0)
        let states = result.events.compactMap { e -> DiskState? in if case .stateChanged(let s) = e { s } else { nil } }
        #expect(states.contains(.paused(.nospace)))
        if let p = states.firstIndex(of: .paused(.nospace)) { #expect(states[(p + 1)...].first == .running) }
        let pauseErrors = result.writeErrorEvents
        #expect(!pauseErrors.isEmpty && pauseErrors.allSatisfy { $0.errno.rawValue == ENOSPC && $0.action == .pause })
        #expect(UInt64(pauseErrors.count) == c.writeErrors)
        #expect(c.writeBytes == UInt64(writeBytes))

        try fs.remount()
        let bad = try Self.verify(imagePath: imagePath, chunks: chunks, ids: result.okayIDs, generation: generation)
        #expect(bad.isEmpty, "OKAY writes that did not read back: \(bad.prefix(10))")
        let seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
        print(
            String(
                format:
                    "[RealENOSPC] pause%@: free %.2f MiB, with filler %.2f MiB, after removal %.2f MiB; %d writes, %d held at pause, %llu resubmitted, %llu nospace errors, %d pause(s), %.2f MiB OKAY before the pause, all %d OKAY; %.1f s",
                shuffled ? " shuffled" : " sequential", Self.mib(freeAtStart), Self.mib(freeWithFiller),
                Self.mib(freeAfterRemoval), chunks.count, heldAtPause,
                c.resubmittedRequests, c.nospaceErrors, pauses, Self.mib(okayBytesAtPause), result.okayIDs.count,
                seconds))
        fs.cleanup()
        #expect(!Self.leaked(fs), "leaked mount or loop device for \(mountPoint)")
        #expect(seconds < 20)
    }

    // MARK: - The report scenario

    struct ReportOutcome {
        var flushStatus: Int16?
        var syncFailed: Bool
        var ioStatus: IOStatus
    }

    /// Writes the whole 64 MiB disk on a 16 MiB filesystem with policy `report`, then a FLUSH;
    /// detaches, closes, remounts and verifies the OKAY writes.
    func runReport(cache: CacheMode, generation: UInt64, shuffled: Bool) throws -> ReportOutcome {
        let start = MonotonicClock.nanoseconds()
        let fs = try LoopFilesystem(sizeMiB: 16)
        defer { fs.cleanup() }
        let mountPoint = fs.mountPoint
        let freeAtStart = try fs.freeBytes()
        let imagePath = try Self.makeSparseImage(fs.path("disk.img"), bytes: Self.imageBytes)
        var rng = SplitMix(seed: 0x7A9D_15C0 ^ generation)
        let chunks = Self.chunks(blocks: Self.imageBytes / Self.blockBytes, rng: &rng, shuffled: shuffled)

        let result = try Self.drive(
            imagePath: imagePath, cache: cache, policy: FailurePolicy(), chunks: chunks, generation: generation,
            flush: true
        ) { h in
            if h.engine.state != .running { Issue.record("unexpected state \(h.engine.state) under policy report") }
        }
        let driveSeconds = Double(MonotonicClock.nanoseconds() - start) / 1e9

        Self.checkAnsweredOnce(result, chunks: chunks)
        let c = result.counters
        let okay = UInt64(result.okayIDs.count)
        let errors = UInt64(result.errorIDs.count)
        // ENOSPC really happened, and every ERROR was counted and reported.
        #expect(errors > 0, "no write failed: the filesystem never filled up")
        #expect(okay > 0)
        #expect(c.nospaceErrors > 0)
        #expect(c.writeRequests == UInt64(chunks.count))
        #expect(c.writeErrors == errors)
        #expect(c.nospaceErrors == errors, "some failures were not ENOSPC")
        let flushOK: UInt64 = result.flushStatus == 0 ? 1 : 0
        #expect(c.responsesOkay == okay + flushOK)
        #expect(c.responsesError == errors + (1 - flushOK))
        #expect(c.flushErrors == 1 - flushOK)
        #expect(c.held == 0 && c.inFlight == 0 && c.invariantHolds)
        #expect(c.resubmittedRequests == 0)
        #expect(c.writeBytes == result.okayBytes)
        let errorEvents = result.writeErrorEvents
        #expect(UInt64(errorEvents.count) == errors)
        #expect(errorEvents.allSatisfy { $0.errno.rawValue == ENOSPC && $0.action == .report })
        #expect(errorEvents.contains { $0.errno == Errno(rawValue: ENOSPC) })
        let errorSectors = Set(result.errorIDs.map { chunks[Int($0) - 1].sector })
        #expect(Set(errorEvents.map(\.sector)) == errorSectors)
        #expect(result.stateBeforeDetach == .running)
        #expect(result.finalState == .idle)
        #expect(result.okayBytes <= freeAtStart)

        // Durability beyond the page cache: the image fd is closed (drive returned), so umount
        // succeeds only if nothing holds the filesystem.
        try fs.remount()
        var verified = "no (FLUSH failed)"
        if cache != .writeback || result.flushStatus == 0 {
            let bad = try Self.verify(imagePath: imagePath, chunks: chunks, ids: result.okayIDs, generation: generation)
            #expect(bad.isEmpty, "OKAY writes that did not read back: \(bad.prefix(10))")
            verified = "\(result.okayIDs.count - bad.count) of \(result.okayIDs.count) OKAY writes intact"
        }
        let seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
        print(
            String(
                format:
                    "[RealENOSPC] cache %@%@: free %.2f MiB; %d writes: %llu OKAY (%.2f MiB), %llu ERROR; %.2f MiB OKAY before the first ERROR; short completions %llu; flush %@; after remount %@; drive %.1f s, total %.1f s",
                cache.rawValue, shuffled ? " shuffled" : " sequential", Self.mib(freeAtStart), chunks.count, okay,
                Self.mib(result.okayBytes), errors, Self.mib(result.okayBytesBeforeFirstFailure), c.shortCompletions,
                result.flushStatus.map { $0 == 0 ? "OKAY" : "ERROR(\($0))" } ?? "unanswered",
                verified, driveSeconds, seconds))
        fs.cleanup()
        #expect(!Self.leaked(fs), "leaked mount or loop device for \(mountPoint)")
        #expect(seconds < 20)
        return ReportOutcome(flushStatus: result.flushStatus, syncFailed: result.syncFailed, ioStatus: result.ioStatus)
    }

    // MARK: - The frontend workload

    struct Chunk {
        var id: UInt64
        var block: Int
        var pages: Int
        var sector: UInt64 { UInt64(block) * UInt64(Self.sectorsPerBlock) }
        var bytes: Int { pages * RealENOSPCTests.blockBytes }
        static let sectorsPerBlock = RealENOSPCTests.blockBytes / RingLayout.sectorSize
    }

    /// Splits `blocks` 4 KiB blocks into requests of 1...11 pages, covering each block once.
    static func chunks(blocks: Int, rng: inout SplitMix, shuffled: Bool) -> [Chunk] {
        var out: [Chunk] = []
        var block = 0
        while block < blocks {
            let pages = min(Int(rng.next() % UInt64(maxPages)) + 1, blocks - block)
            out.append(Chunk(id: 0, block: block, pages: pages))
            block += pages
        }
        if shuffled {
            for i in stride(from: out.count - 1, to: 0, by: -1) {
                out.swapAt(i, Int(rng.next() % UInt64(i + 1)))
            }
        }
        for i in out.indices { out[i].id = UInt64(i + 1) }  // id k is chunks[k - 1]
        return out
    }

    /// The content of one 4 KiB block: its block number and the test's generation.
    static func seed(block: Int, generation: UInt64) -> UInt64 { generation << 40 | UInt64(block) }

    struct DriveResult {
        var responses: [FrontendRing.Response]
        var okayIDs: [UInt64]
        var errorIDs: [UInt64]
        var okayBytes: UInt64
        var okayBytesBeforeFirstFailure: UInt64
        var flushID: UInt64?
        var flushStatus: Int16?
        var counters: Counters
        var events: [EngineEvent]
        var ioStatus: IOStatus
        var syncFailed: Bool
        var stateBeforeDetach: DiskState
        var finalState: DiskState
        var unanswered: Int
        var violations: Int

        var writeErrorEvents: [(errno: Errno, action: FailureAction, sector: UInt64)] {
            events.compactMap { e in
                if case .ioError("write", let errno, let action, let sector) = e { return (errno, action, sector) }
                return nil
            }
        }
    }

    /// Plays the frontend: keeps `depth` writes outstanding (slot `s` owns data pages
    /// `s*11 ..< s*11+11` until its request is answered), then sends a FLUSH, then detaches.
    /// `idle` runs whenever a step produced no response. The harness, engine and image fd are
    /// gone when this returns.
    static func drive(
        imagePath: String, cache: CacheMode, policy: FailurePolicy, chunks: [Chunk], generation: UInt64,
        flush: Bool, timeoutSeconds: Double = 30, idle: (EngineHarness) -> Void
    ) throws -> DriveResult {
        let h = try EngineHarness(
            imagePath: imagePath, cache: cache, policy: policy, pageOrder: 1, dataPages: depth * maxPages)
        #expect(h.frontend.entries >= UInt32(depth))
        #expect(h.engine.image.geometry.sectorSize <= UInt32(blockBytes))
        var freeSlots = Array((0..<depth).reversed())
        var slotOf: [UInt64: Int] = [:]
        var okayIDs: [UInt64] = []
        var errorIDs: [UInt64] = []
        var okayBytes: UInt64 = 0
        var okayBeforeFailure: UInt64 = 0
        var sawFailure = false
        var seen = 0
        var next = 0
        let deadline = MonotonicClock.nanoseconds() + UInt64(timeoutSeconds * 1e9)

        func absorb() -> Bool {
            guard seen < h.responses.count else { return false }
            for r in h.responses[seen...] {
                guard let slot = slotOf.removeValue(forKey: r.id) else { continue }  // duplicates: checked later
                freeSlots.append(slot)
                let chunk = chunks[Int(r.id) - 1]
                if r.status == 0 {
                    okayIDs.append(r.id)
                    okayBytes += UInt64(chunk.bytes)
                    if !sawFailure { okayBeforeFailure += UInt64(chunk.bytes) }
                } else {
                    errorIDs.append(r.id)
                    sawFailure = true
                }
            }
            seen = h.responses.count
            return true
        }

        while next < chunks.count || !slotOf.isEmpty {
            if MonotonicClock.nanoseconds() > deadline {
                Issue.record("timed out: \(chunks.count - next) writes not sent, \(slotOf.count) unanswered")
                break
            }
            var batch: [clibaio_blkif_request] = []
            while next < chunks.count, let slot = freeSlots.popLast() {
                let chunk = chunks[next]
                next += 1
                let first = UInt32(slot * maxPages)
                var segments: [BlkifSegment] = []
                for p in 0..<chunk.pages {
                    let gref = first + UInt32(p)
                    Pattern.fill(
                        h.frontend.page(gref), bytes: blockBytes,
                        seed: seed(block: chunk.block + p, generation: generation))
                    segments.append(BlkifSegment(gref: gref))
                }
                slotOf[chunk.id] = slot
                batch.append(BlkifRequest.write(id: chunk.id, sector: chunk.sector, segments: segments))
            }
            if !batch.isEmpty { h.submit(batch) }
            if absorb() { continue }
            h.step()
            if !absorb() {
                idle(h)
                _ = absorb()
            }
        }
        let unanswered = slotOf.count

        var flushID: UInt64? = nil
        var flushStatus: Int16? = nil
        if flush && unanswered == 0 {
            let id = UInt64(chunks.count + 1)
            flushID = id
            let before = h.responses.count
            h.submit([BlkifRequest.flush(id: id)])
            #expect(h.run(untilResponses: before + 1, timeoutSeconds: 20))
            flushStatus = h.status(of: id)
        }
        let stateBeforeDetach = h.engine.state
        let answeredBeforeDetach = h.responses.count
        h.engine.beginDetach()
        #expect(h.waitDrained())
        _ = h.finishDetach()
        h.collect()
        #expect(h.responses.count == answeredBeforeDetach, "detach answered requests that were still held")
        #expect(h.violations == 0)
        return DriveResult(
            responses: h.responses, okayIDs: okayIDs, errorIDs: errorIDs, okayBytes: okayBytes,
            okayBytesBeforeFirstFailure: okayBeforeFailure, flushID: flushID, flushStatus: flushStatus,
            counters: h.engine.counters, events: h.events, ioStatus: h.engine.ioStatus,
            syncFailed: h.engine.syncFailed, stateBeforeDetach: stateBeforeDetach, finalState: h.engine.state,
            unanswered: unanswered, violations: h.violations)
    }

    /// Every write (and the FLUSH) answered exactly once, with its own operation, and nothing else.
    static func checkAnsweredOnce(_ result: DriveResult, chunks: [Chunk]) {
        #expect(result.unanswered == 0)
        var count = [Int](repeating: 0, count: chunks.count + 2)
        var strays = 0
        for r in result.responses {
            guard r.id >= 1, Int(r.id) <= chunks.count + 1 else {
                strays += 1
                continue
            }
            count[Int(r.id)] += 1
            let expected = r.id == result.flushID ? BlkifOperation.flushDiskCache : BlkifOperation.write
            #expect(r.operation == expected.rawValue)
            #expect(r.status == 0 || r.status == -1, "status \(r.status) for \(r.id)")
            #expect(r.paddingIsZero)
        }
        #expect(strays == 0)
        let writesNotOnce = (1...chunks.count).filter { count[$0] != 1 }
        #expect(writesNotOnce.isEmpty, "writes not answered exactly once: \(writesNotOnce.prefix(10))")
        if let f = result.flushID { #expect(count[Int(f)] == 1) }
        #expect(result.okayIDs.count + result.errorIDs.count == chunks.count)
        #expect(result.counters.invariantHolds)
    }

    /// Reads the image directly and returns the OKAY writes whose blocks differ from what was
    /// written.
    static func verify(imagePath: String, chunks: [Chunk], ids: [UInt64], generation: UInt64) throws -> [UInt64] {
        let fd = open(imagePath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno.current }
        defer { close(fd) }
        var bad: [UInt64] = []
        var buf = [UInt8](repeating: 0, count: maxPages * blockBytes)
        var expected = [UInt8](repeating: 0, count: blockBytes)
        for id in ids {
            let chunk = chunks[Int(id) - 1]
            let n = buf.withUnsafeMutableBytes {
                pread(fd, $0.baseAddress, chunk.bytes, off_t(chunk.block * blockBytes))
            }
            guard n == chunk.bytes else {
                bad.append(id)
                continue
            }
            var ok = true
            for p in 0..<chunk.pages where ok {
                expected.withUnsafeMutableBytes {
                    Pattern.fill(
                        $0.baseAddress!, bytes: blockBytes, seed: seed(block: chunk.block + p, generation: generation))
                }
                ok = buf.withUnsafeBytes { b in
                    expected.withUnsafeBytes { e in
                        memcmp(b.baseAddress! + p * blockBytes, e.baseAddress!, blockBytes) == 0
                    }
                }
            }
            if !ok { bad.append(id) }
        }
        return bad
    }

    static func makeSparseImage(_ path: String, bytes: Int) throws -> String {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Errno.current }
        defer { close(fd) }
        guard ftruncate(fd, off_t(bytes)) == 0 else { throw Errno.current }
        return path
    }

    /// After cleanup: the mountpoint is gone from /proc/mounts and the loop device is detached.
    static func leaked(_ fs: LoopFilesystem) -> Bool {
        let mounts = ProcFile.read("/proc/mounts") ?? ""
        let loops = (try? Shell.run(["losetup", "-a"]))?.stdout ?? ""
        return LoopFilesystem.isMounted(fs.mountPoint) || mounts.contains(fs.mountPoint)
            || loops.contains(fs.backingFile)
    }

    static func mib(_ bytes: UInt64) -> Double { Double(bytes) / 1_048_576 }
}
