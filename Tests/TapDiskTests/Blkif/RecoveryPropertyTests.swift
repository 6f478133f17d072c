import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// Frontend recovery (PROTOCOL.md §2.3) through the real daemon process: a randomized, pipelined
/// stream of READs, WRITEs, FLUSHes and BARRIERs (depth up to 32, a third of the data requests
/// INDIRECT) goes through `RecoveringDisk` while the test `kill -9`s the daemon at random points
/// and, as the supervisor, starts a new one on the same image and socket path. A shadow model of
/// the disk checks that every request is answered exactly once to the caller, every read returns
/// what the model says, and the image equals the model after a final clean detach. In-flight
/// requests never overlap, so a WRITE executed twice (before the kill and again after) writes
/// the same bytes and the model stays exact.
///
/// The normal suite does 20 kills (about 3 s). The long run the project's figures come from:
///
///     TAPDISK_RECOVERY_KILLS=100 swift test --skip-build --filter RecoveryPropertyTests
@Suite struct RecoveryPropertyTests {
    static let blocks = 2048  // 8 MiB of 4 KiB blocks
    static let dataPages = 1024

    struct Pending {
        var op: UInt8
        var firstBlock: Int
        var grefs: [UInt32]
        var blockCount: Int
        var hashes: [UInt64]
    }

    @Test func killNineUnderLoad() throws {
        let kills = Int(ProcessInfo.processInfo.environment["TAPDISK_RECOVERY_KILLS"] ?? "") ?? 20
        let image = try DaemonTest.image(bytes: Self.blocks * 4096)
        defer { unlink(image) }
        let directory = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var daemon = try DaemonProcess(image: image, directory: directory, keepsDirectory: true)
        let disk = try RecoveringDisk(
            socketPath: daemon.socketPath, pageOrder: 2, dataPages: Self.dataPages, reconnectSeconds: 30)

        var rng = SplitMix(seed: 0x5EC0_7E12)
        var model = [UInt64](repeating: BlockHash.zeros, count: Self.blocks)
        var busy = [Bool](repeating: false, count: Self.blocks)
        var freeGrefs = (0..<UInt32(Self.dataPages)).reversed().map { $0 }
        var pending: [UInt64: Pending] = [:]
        var answered = Set<UInt64>()
        var sent: UInt64 = 0
        var indirectSent = 0
        var okayReads = 0
        var killed = 0
        var completionsSinceKill = 0
        var killAfter = Int(1 + rng.next() % 300)
        var outstandingAtKill: [Int] = []
        var lastProgress = MonotonicClock.nanoseconds()

        func makeRequest(tag: UInt64) -> clibaio_blkif_request? {
            let roll = rng.next() % 100
            if roll >= 90 {
                let flush = roll < 96
                pending[tag] = Pending(op: flush ? 3 : 2, firstBlock: 0, grefs: [], blockCount: 0, hashes: [])
                return flush ? BlkifRequest.flush(id: tag) : BlkifRequest.barrier(id: tag)
            }
            let indirect = rng.next() % 3 == 0
            let count = Int(1 + rng.next() % (indirect ? 24 : 11))
            let start = Int(rng.next() % UInt64(Self.blocks - count))
            if (start..<(start + count)).contains(where: { busy[$0] }) { return nil }
            for b in start..<(start + count) { busy[b] = true }
            let grefs = (0..<count).map { _ in freeGrefs.removeLast() }
            let descriptorPage = indirect ? freeGrefs.removeLast() : 0
            if indirect { indirectSent += 1 }
            let write = roll < 50
            var hashes: [UInt64] = []
            if write {
                for g in grefs {
                    Pattern.fill(disk.page(g), bytes: 4096, seed: rng.next())
                    hashes.append(BlockHash.of(disk.page(g), 4096))
                }
            }
            pending[tag] = Pending(
                op: write ? 1 : 0, firstBlock: start, grefs: indirect ? grefs + [descriptorPage] : grefs,
                blockCount: count, hashes: hashes)
            return disk.frontend.dataRequest(
                write: write, id: tag, sector: UInt64(start) * 8, segments: grefs.map { BlkifSegment(gref: $0) },
                descriptorPage: indirect ? descriptorPage : nil)
        }

        func absorb(_ c: RecoveringDisk.Completion) {
            guard answered.insert(c.tag).inserted, let p = pending.removeValue(forKey: c.tag) else {
                Issue.record("tag \(c.tag) answered twice or never sent")
                return
            }
            #expect(c.operation == p.op && c.status == 0, "tag \(c.tag): op \(c.operation) status \(c.status)")
            let blocks = p.firstBlock..<(p.firstBlock + p.blockCount)
            if p.op == 1 {
                for (i, b) in blocks.enumerated() { model[b] = p.hashes[i] }
            } else if p.op == 0 {
                okayReads += 1
                for (i, b) in blocks.enumerated() {
                    #expect(BlockHash.of(disk.page(p.grefs[i]), 4096) == model[b], "read of block \(b)")
                }
            }
            for b in blocks { busy[b] = false }
            freeGrefs.append(contentsOf: p.grefs)
            completionsSinceKill += 1
        }

        while killed < kills || !pending.isEmpty {
            let depth = Int(1 + rng.next() % 32)
            var produced = 0
            while killed < kills && pending.count < depth && freeGrefs.count >= 25 && disk.freeRequests > 0 {
                guard let request = makeRequest(tag: sent + 1) else { break }
                disk.enqueue(request)
                sent += 1
                produced += 1
            }
            if produced > 0 { disk.push() }
            if killed < kills && completionsSinceKill >= killAfter {
                // A random moment after the push: the daemon may be reading the ring, have AIO in
                // flight, or be writing responses.
                usleep(UInt32(rng.next() % 2000))
                outstandingAtKill.append(pending.count)
                daemon.signal(SIGKILL)
                #expect(daemon.waitForExit() != nil)
                killed += 1
                completionsSinceKill = 0
                killAfter = Int(1 + rng.next() % 300)
                // The supervisor: a new daemon on the same image and socket, not waited for.
                daemon = try DaemonProcess(
                    image: image, directory: directory, waitsUntilReady: false, keepsDirectory: true)
            }
            if pending.isEmpty { continue }
            try disk.wait(timeoutMilliseconds: 50)
            var got = 0
            try disk.reap { c in
                got += 1
                absorb(c)
            }
            let now = MonotonicClock.nanoseconds()
            if got > 0 || produced > 0 {
                lastProgress = now
            } else if now - lastProgress > 20_000_000_000 {
                Issue.record("\(pending.count) requests unanswered for 20 s: \(daemon.log)")
                return
            }
        }
        #expect(answered.count == Int(sent) && pending.isEmpty)
        #expect(disk.recoveries == kills)
        #expect(disk.droppedResponses == 0)
        _ = try disk.disk.detach()
        var corrupted = 0
        let fd = open(image, O_RDONLY)
        defer { close(fd) }
        var block = [UInt8](repeating: 0, count: 4096)
        for b in 0..<Self.blocks {
            let hash = block.withUnsafeMutableBytes { raw -> UInt64 in
                guard pread(fd, raw.baseAddress, 4096, off_t(b * 4096)) == 4096 else { return 0 }
                return BlockHash.of(raw.baseAddress!, 4096)
            }
            if hash != model[b] { corrupted += 1 }
        }
        #expect(corrupted == 0, "\(corrupted) image blocks differ from the model")
        let stalls = disk.stalls.sorted()
        let median = stalls.isEmpty ? 0 : stalls[stalls.count / 2] / 1_000_000
        let maximum = (stalls.last ?? 0) / 1_000_000
        print(
            "recovery property: \(kills) kills, \(sent) requests (\(indirectSent) INDIRECT, \(okayReads) reads checked), \(disk.recoveries) recoveries, \(disk.resubmitted) resubmitted (outstanding at kill max \(outstandingAtKill.max() ?? 0)), \(disk.droppedResponses) dropped responses, \(answered.count) answered once, \(corrupted) corrupted blocks, stall ms median \(median) max \(maximum) over \(stalls.count), reconnect attempts \(disk.reconnectAttempts)"
        )
        #expect(disk.resubmitted > 0 && indirectSent > 0)
    }

    /// `tapdiskd bench --recover` keeps running across three `kill -9`s of the daemon it drives
    /// (each while the bench is attached and loading it) and reports each recovery once.
    @Test func benchRecoverSurvivesKills() throws {
        let image = try DaemonTest.image(bytes: 16 << 20)
        defer { unlink(image) }
        let directory = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var daemon = try DaemonProcess(image: image, directory: directory, keepsDirectory: true)
        let bench = Process()
        bench.executableURL = URL(fileURLWithPath: DaemonProcess.binary)
        bench.arguments = [
            "bench", "--socket", daemon.socketPath, "--recover", "--rw", "randwrite", "--iodepth", "8", "--seconds",
            "4", "--json",
        ]
        let out = Pipe()
        bench.standardOutput = out
        bench.standardError = FileHandle.nullDevice
        try bench.run()
        defer {
            if bench.isRunning { kill(bench.processIdentifier, SIGKILL) }
            bench.waitUntilExit()
        }
        func attachedAndServing() -> Bool {
            guard let c = try? ControlClient(socketPath: daemon.socketPath),
                let status = try? c.call("status"), let stats = try? c.call("stats")
            else { return false }
            return status["state"]?.stringValue == "running"
                && (stats["counters"]?.objectValue?["write-requests"]?.uint64Value ?? 0) > 0
        }
        for _ in 0..<3 {
            #expect(DaemonTest.waitUntil(seconds: 20) { attachedAndServing() }, "the bench did not reattach")
            daemon.signal(SIGKILL)
            #expect(daemon.waitForExit() != nil)
            daemon = try DaemonProcess(image: image, directory: directory, waitsUntilReady: false, keepsDirectory: true)
        }
        let output = out.fileHandleForReading.readDataToEndOfFile()
        bench.waitUntilExit()
        #expect(bench.terminationStatus == 0)
        let report = try JSONParser.parse(String(decoding: output, as: UTF8.self))
        #expect(report["recoveries"]?.uint64Value == 3, "\(report)")
        #expect(report["dropped-responses"]?.uint64Value == 0)
        #expect(report["errors"]?.uint64Value == 0 && report["ok"] == .bool(true))
    }
}
