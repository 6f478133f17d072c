import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The exactly-once cases of `BarrierLoopTests`, against the real daemon process: a frontend in
/// this process, the daemon sleeping in its own epoll in another; with polling off and on.
@Suite struct DaemonBarrierTests {
    static let deadline = 5.0

    func fill(_ d: DiskDriver, _ grefs: ClosedRange<UInt32>, seed: UInt64) -> [BlkifSegment] {
        for g in grefs { Pattern.fill(d.frontend.page(g), bytes: 4096, seed: seed &+ UInt64(g)) }
        return grefs.map { BlkifSegment(gref: $0) }
    }

    func imageBytes(_ path: String, offset: Int, count: Int) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: count)
        return buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) } == count ? buf : []
    }

    func send(_ d: DiskDriver, _ requests: [clibaio_blkif_request]) {
        for r in requests { d.frontend.enqueue(r) }
        d.push()
    }

    @Test(arguments: ["0", "50"]) func emptyBarrierOnIdleDisk(pollUs: String) throws {
        let daemon = try DaemonProcess(imageBytes: 1 << 20, arguments: ["--poll-us", pollUs])
        let d = try DiskDriver(socketPath: daemon.socketPath)
        send(d, [BlkifRequest.barrier(id: 1)])
        #expect(d.wait(forResponses: 1, seconds: Self.deadline), "an empty BARRIER on an idle disk hung")
        #expect(d.status(1) == 0)
        #expect(d.roundTrip(sector: 0, seed: 3))
        try DaemonTest.expectInvariant(d.control)
    }

    @Test(arguments: ["0", "50"]) func barrierWithDataOnIdleDisk(pollUs: String) throws {
        let daemon = try DaemonProcess(imageBytes: 1 << 20, arguments: ["--poll-us", pollUs])
        let d = try DiskDriver(socketPath: daemon.socketPath)
        send(d, [BlkifRequest.barrier(id: 1, sector: 32, segments: fill(d, 0...1, seed: 5))])
        #expect(d.wait(forResponses: 1, seconds: Self.deadline), "a BARRIER with data on an idle disk hung")
        #expect(d.status(1) == 0)
        let expected = (0...1).flatMap {
            Array(UnsafeRawBufferPointer(start: d.frontend.page(UInt32($0)), count: 4096))
        }
        let landed = imageBytes(daemon.imagePath, offset: 32 * 512, count: 8192) == expected
        #expect(landed, "the BARRIER's data is not in the image")
    }

    @Test(arguments: ["0", "50"]) func barrierAsFirstRequestAfterAttach(pollUs: String) throws {
        let daemon = try DaemonProcess(imageBytes: 1 << 20, arguments: ["--poll-us", pollUs])
        let client = try daemon.client()
        let frontend = try BlockFrontend(pageOrder: 0, dataPages: 4)
        frontend.enqueue(BlkifRequest.barrier(id: 1))
        frontend.enqueue(BlkifRequest.barrier(id: 2, sector: 8, segments: [BlkifSegment(gref: 0)]))
        frontend.push()
        let reply = try client.call(
            "attach", DaemonTest.attachArguments(order: 0, dataPages: 4),
            fds: [frontend.memory.rawValue, frontend.kick.rawValue, frontend.notify.rawValue])
        #expect(reply["ok"] == .bool(true))
        var got: [FrontendRing.Response] = []
        let deadline = MonotonicClock.nanoseconds() + UInt64(Self.deadline * 1e9)
        while got.count < 2 && MonotonicClock.nanoseconds() < deadline {
            _ = frontend.waitForNotification(timeoutMilliseconds: 100)
            _ = frontend.reap { got.append($0) }
        }
        #expect(got.map(\.id) == [1, 2], "BARRIERs published before attach were not both answered")
        #expect(got.allSatisfy { $0.status == 0 })
    }

    @Test(arguments: ["0", "50"]) func barrierWhileRequestsAreInFlight(pollUs: String) throws {
        let daemon = try DaemonProcess(imageBytes: 4 << 20, arguments: ["--poll-us", pollUs])
        let d = try DiskDriver(socketPath: daemon.socketPath)
        var batch: [clibaio_blkif_request] = []
        for i in 0..<8 {
            batch.append(
                BlkifRequest.write(
                    id: UInt64(i), sector: UInt64(i) * 8, segments: fill(d, UInt32(i)...UInt32(i), seed: 50)))
        }
        batch.append(BlkifRequest.barrier(id: 100))
        for i in 0..<4 {
            batch.append(
                BlkifRequest.read(
                    id: 200 + UInt64(i), sector: UInt64(i) * 8, segments: [BlkifSegment(gref: 20 + UInt32(i))]))
        }
        send(d, batch)
        #expect(d.wait(forResponses: batch.count, seconds: Self.deadline))
        #expect(batch.allSatisfy { d.status($0.id) == 0 })
        for i in 0..<4 {
            #expect(memcmp(d.frontend.page(20 + UInt32(i)), d.frontend.page(UInt32(i)), 4096) == 0)
        }
    }

    /// The real daemon with a sync that fails (the debug build's fault seam, `TAPDISK_FAULTS`).
    @Test(arguments: ["0", "50"]) func barrierAfterFailedSync(pollUs: String) throws {
        var environment = ProcessInfo.processInfo.environment
        environment["TAPDISK_FAULTS"] = "sync:EIO"
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let daemon = try DaemonProcess(image: image, arguments: ["--poll-us", pollUs], environment: environment)
        let d = try DiskDriver(socketPath: daemon.socketPath)
        send(d, [BlkifRequest.flush(id: 1)])
        #expect(d.wait(forResponses: 1, seconds: Self.deadline))
        #expect(d.status(1) == -1)
        send(d, [BlkifRequest.barrier(id: 2)])
        #expect(d.wait(forResponses: 2, seconds: Self.deadline), "a BARRIER after a failed sync hung")
        send(d, [BlkifRequest.barrier(id: 3, sector: 8, segments: [BlkifSegment(gref: 0)])])
        #expect(d.wait(forResponses: 3, seconds: Self.deadline))
        #expect(d.status(2) == -1 && d.status(3) == -1)
        let status = try d.control.call("status")
        #expect(status["io-status"]?.stringValue == "failed")
        let c = try DaemonTest.expectInvariant(d.control)
        #expect(c["flush-errors"] == 3)
        #expect(d.roundTrip(sector: 16, seed: 4))
    }

    @Test(arguments: ["0", "50"]) func readOnlyDisksEmptyBarrier(pollUs: String) throws {
        let daemon = try DaemonProcess(imageBytes: 1 << 20, arguments: ["--readonly", "--poll-us", pollUs])
        let d = try DiskDriver(socketPath: daemon.socketPath)
        send(d, [BlkifRequest.barrier(id: 1)])
        #expect(d.wait(forResponses: 1, seconds: Self.deadline), "a read-only disk's empty BARRIER hung")
        #expect(d.status(1) == 0)
        send(d, [BlkifRequest.read(id: 2, sector: 0, segments: [BlkifSegment(gref: 0)])])
        #expect(d.wait(forResponses: 2, seconds: Self.deadline) && d.status(2) == 0)
    }

    /// Requests answered without I/O for more rounds than one `service` runs (lowered to 1 in
    /// the debug daemon, so the yield happens often): the daemon must loop again, not sleep.
    @Test(arguments: ["0", "50"]) func moreThanRoundLimitOfRequestsWithoutIO(pollUs: String) throws {
        var environment = ProcessInfo.processInfo.environment
        environment["TAPDISK_ROUNDS_PER_SERVICE"] = "1"
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let daemon = try DaemonProcess(image: image, arguments: ["--poll-us", pollUs], environment: environment)
        let disk = try RemoteDisk(socketPath: daemon.socketPath, pageOrder: 4, dataPages: 1)
        let total = 200_000
        let r = NoIOStream.run(disk.frontend, total: total)
        print("no-I/O stream through the daemon: \(r)")
        #expect(!r.stalled, "the ring stalled: \(r)")
        #expect(r.answered == total && r.okay == total && r.duplicates == 0 && r.unknown == 0)
        let c = try DaemonTest.expectInvariant(disk.control)
        #expect(c["discard-requests"] == UInt64(total))
    }
}
