import Foundation
import Glibc
import Testing

@testable import TapDisk

/// §1: an image whose filesystem refuses O_DIRECT (ramfs has no direct I/O) stops the daemon
/// with a message naming `--cache writeback`; it never falls back silently. Buffered caching
/// serves the same image.
@Suite(.serialized, .enabled(if: LoopFilesystem.isRoot)) struct DirectIORefusalTests {
    @Test func ramfsImageNeedsBufferedCaching() throws {
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mnt = dir + "/ramfs"
        mkdir(mnt, 0o755)
        try Shell.check(["mount", "-t", "ramfs", "ramfs", mnt])
        defer { _ = try? Shell.run(["umount", mnt]) }
        let image = mnt + "/disk.img"
        try Shell.check(["truncate", "-s", "4M", image])
        let refused = try Tapdiskd.run(["--image", image, "--socket", dir + "/refused.sock"])
        #expect(refused.status != 0)
        #expect(refused.stderrLines.count == 1)
        #expect(refused.stderr.contains("--cache writeback"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/refused.sock"))
        let daemon = try DaemonProcess(image: image, arguments: ["--cache", "writeback"])
        defer { daemon.forceStop() }
        let disk = try RemoteDisk(socketPath: daemon.socketPath, pageOrder: 0, dataPages: 4)
        #expect(DiskDriver(disk).roundTrip(sector: 0, seed: 3))
    }
}
