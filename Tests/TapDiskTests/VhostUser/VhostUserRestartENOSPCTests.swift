import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The paused case of issue 18, with real ENOSPC: a disk on a nearly full ext4 loop filesystem
/// under `--on-nospace pause` holds the writes that found no space while the others complete;
/// the daemon is killed (an upgrade gone wrong) and a new one takes over the same guest. The
/// held writes come back through the inflight region, are held again while the filesystem is
/// still full, and land once space appears: one used entry per head, every write on disk.
@Suite(.serialized, .enabled(if: LoopFilesystem.isRoot, "needs root for mount/losetup"), .timeLimit(.minutes(10)))
struct VhostUserRestartENOSPCTests {
    typealias Ring = VhostUserTestRing
    typealias Frontend = VhostUserTestFrontend

    static let writes = 8
    static let writeBytes = 16384

    private func daemon(image: String) throws -> (DaemonProcess, String) {
        let dir = DaemonProcess.makeDirectory()
        let socket = dir + "/vhost.sock"
        let process = try DaemonProcess(
            image: image, arguments: ["--vhost-user-blk", socket, "--on-nospace", "pause", "--pause-timeout", "0"],
            directory: dir)
        return (process, socket)
    }

    private func state(_ d: DaemonProcess) -> JSONObject? { try? d.client().call("status") }

    /// Paused with nothing submitted (the held writes wait; nothing else is on its way).
    private func settledPause(_ d: DaemonProcess, seconds: Double = 20) -> Bool {
        DaemonTest.waitUntil(seconds: seconds) {
            guard let s = state(d) else { return false }
            return s["state"] == .string("paused") && s["in-flight"]?.int64Value == 0
        }
    }

    private func bytes(_ image: String, sector: UInt64) -> [UInt8] {
        guard let fd = try? FileDescriptor.open(image, flags: O_RDONLY) else { return [] }
        var b = [UInt8](repeating: 0, count: Self.writeBytes)
        let n = b.withUnsafeMutableBytes { pread(fd.rawValue, $0.baseAddress, $0.count, off_t(sector * 512)) }
        return n == Self.writeBytes ? b : []
    }

    @Test(arguments: 0..<20) func heldWritesSurviveARestartAndLandWhenSpaceAppears(run: Int) throws {
        let fs = try LoopFilesystem(sizeMiB: 16)
        defer { fs.cleanup() }
        let image = try RealENOSPCTests.makeSparseImage(fs.path("disk.img"), bytes: 16 << 20)
        try fs.fill(leaving: 40 << 10)
        let (first, socket1) = try daemon(image: image)
        let f = try Frontend(socketPath: socket1)
        try f.startWithInflight()
        var data: [[UInt8]] = []
        for i in 0..<Self.writes {
            let bytes = (0..<Self.writeBytes).map { UInt8(truncatingIfNeeded: $0 / 3 &+ i &* 37 &+ run) }
            data.append(bytes)
            f.fill(at: Ring.data(UInt64(i) * 0x4000), with: bytes)
            f.prepare(
                first: 3 * i, type: VirtioBlkType.write, sector: UInt64(i * 64), bytes: UInt32(Self.writeBytes),
                dataOffset: UInt64(i) * 0x4000)
        }
        f.publish((0..<Self.writes).map { UInt16(3 * $0) })
        try #require(settledPause(first), "run \(run): no settled pause: \(first.log.suffix(1500))")
        f.collect()
        let answeredBefore = f.used.count
        let held = (0..<Self.writes).filter { i in !f.used.contains { $0.id == UInt32(3 * i) } }
        #expect(!held.isEmpty && held.allSatisfy { f.inflightMarked(3 * $0) }, "run \(run): held \(held)")

        first.signal(SIGKILL)
        #expect(first.waitForExit() != nil)
        let (second, socket2) = try daemon(image: image)
        try f.reconnect(to: socket2)
        // The filesystem is still full: the resubmitted writes are held again.
        let pausedAgain = settledPause(second, seconds: 10)
        f.collect()
        let answeredWhileFull = f.used.count - answeredBefore
        #expect(pausedAgain && answeredWhileFull == 0, "run \(run): the resubmitted writes were not held again")
        fs.removeFiller()
        #expect(f.waitForUsed(total: Self.writes, seconds: 30), "run \(run): \(second.log.suffix(1500))")
        _ = f.usedOnceSettled(second)
        print(
            "vhost-user ENOSPC restart run \(run): \(answeredBefore) answered before the kill, held \(held), "
                + "paused again \(pausedAgain), answered while full \(answeredWhileFull), used \(f.used.map(\.id))")
        #expect(f.used.count == Self.writes && f.overAnswered.isEmpty, "run \(run): used \(f.used.map(\.id))")
        for i in 0..<Self.writes {
            #expect(f.status(3 * i) == VirtioBlkStatus.ok.rawValue, "run \(run): write \(i) status \(f.status(3 * i))")
            #expect(bytes(image, sector: UInt64(i * 64)) == data[i], "run \(run): write \(i) not on disk")
            #expect(!f.inflightMarked(3 * i), "run \(run): head \(3 * i) still inflight")
        }
        f.disconnect()
        second.forceStop()
    }
}
