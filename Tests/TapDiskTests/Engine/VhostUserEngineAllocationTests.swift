import Foundation
import Glibc
import Logging
import Synchronization
import Testing

@testable import TapDisk

/// Heap allocations per request on the virtqueue front, through the daemon's own code: an
/// in-process `Daemon` with `--vhost-user-blk`, stepped on this thread (`DiskLoop.step`, as
/// `Daemon.run` does), and the test front-end on another thread. Only this thread's allocations
/// are counted (Support/AllocationCounter.swift), so the front-end's own are not.
@Suite(.serialized, .skipUnderSanitizer(Sanitizer.mallocReason)) struct VhostUserEngineAllocationTests {
    @Test(.timeLimit(.minutes(2))) func steadyStateAllocationsPerVirtioRequest() throws {
        try #require(mallocCounterActive, "the malloc counter is not interposed")
        let directory = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let imageBytes = 16 << 20
        let image = try EngineHarness.makeTemporaryImage(bytes: imageBytes)
        defer { unlink(image) }
        var config = DaemonConfiguration(imagePath: image, socketPath: directory + "/ctl.sock")
        config.vhostUserSocketPath = directory + "/vhost.sock"
        let daemon = try Daemon(config: config, logger: Logger(label: "allocation-test"))
        // The 500 ms timer's housekeeping is not per request: leave it out of the count.
        daemon.loop.remove(daemon.timer.rawValue)

        // 0: setting up and warming, 1: measuring, 2: done, 3: the front-end failed.
        let phase = Atomic<Int>(0)
        let measured = 4000
        let socket = directory + "/vhost.sock"
        let failures = Mutex(0)
        let frontendThread = Thread {
            do {
                let f = try VhostUserTestFrontend(socketPath: socket)
                try f.start()
                let data = [UInt8](repeating: 0x5A, count: 4096)
                var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
                func one(_ i: Int) {
                    rng ^= rng << 13
                    rng ^= rng >> 7
                    rng ^= rng << 17
                    let sector = (rng % UInt64(imageBytes / 4096)) * 8
                    let ok: Bool =
                        i % 2 == 0
                        ? f.write(sector: sector, data) == VirtioBlkStatus.ok.rawValue
                        : f.read(sector: sector)?.0 == VirtioBlkStatus.ok.rawValue
                    if !ok { failures.withLock { $0 += 1 } }
                }
                for i in 0..<1000 { one(i) }
                phase.store(1, ordering: .releasing)
                for i in 0..<measured { one(i) }
                phase.store(2, ordering: .releasing)
                // The disconnect (and its log line) is not a request: wait until the count is taken.
                while phase.load(ordering: .acquiring) != 4 { usleep(1000) }
                f.disconnect()
            } catch {
                print("front-end failed: \(error)")
                phase.store(3, ordering: .releasing)
            }
        }
        frontendThread.start()
        let deadline = MonotonicClock.nanoseconds() + 90_000_000_000
        while phase.load(ordering: .acquiring) == 0 && MonotonicClock.nanoseconds() < deadline {
            daemon.loop.step(daemon, maxWaitMilliseconds: 50)
        }
        let allocations = countAllocations {
            while phase.load(ordering: .acquiring) == 1 && MonotonicClock.nanoseconds() < deadline {
                daemon.loop.step(daemon, maxWaitMilliseconds: 50)
            }
        }
        let measuredPhase = phase.load(ordering: .acquiring)
        phase.store(4, ordering: .releasing)
        // Serve the disconnect and its drain, as the daemon would.
        for _ in 0..<100 { daemon.loop.step(daemon, maxWaitMilliseconds: 10) }
        _ = frontendThread
        let failed = failures.withLock { $0 }
        print(
            "allocations-per-request virtio read+write qd1: \(allocations) allocations / \(measured) requests, \(failed) failures"
        )
        #expect(measuredPhase == 2, "the front-end did not finish (phase \(measuredPhase))")
        #expect(failed == 0)
        #expect(allocations == 0, "\(allocations) heap allocations in \(measured) steady-state virtio requests")
        #expect(daemon.engine.counters.invariantHolds && !daemon.engine.isAttached)
    }
}
