import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

@Suite(.enabled(if: LoopFilesystem.isRoot, "needs root for mount/losetup"))
struct LoopFilesystemTests {
    @Test func mountWriteUntilENOSPCRemountAndCleanup() throws {
        let fs = try LoopFilesystem(sizeMiB: 16)
        let mountPoint = fs.mountPoint
        _ = try #require(fs.loopDevice)
        #expect(LoopFilesystem.isMounted(mountPoint))
        let total = try fs.totalBytes()
        let freeBefore = try fs.freeBytes()
        #expect(total > 12 << 20 && total <= 16 << 20)
        #expect(freeBefore > 12 << 20)

        // Plain buffered write(2) until the filesystem refuses.
        let path = fs.path("big")
        let fd = clibaio_open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        #expect(fd >= 0)
        let chunk = [UInt8](repeating: 0xA5, count: 1 << 16)
        var written: UInt64 = 0
        var failure: Int32 = 0
        while written < 64 << 20 {
            let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
            if n < 0 {
                failure = errno
                break
            }
            written += UInt64(n)
        }
        #expect(failure == ENOSPC)
        #expect(written > freeBefore / 2 && written <= freeBefore)
        _ = fsync(fd)
        close(fd)
        #expect(try fs.freeBytes() < 1 << 20)

        // The data survives a remount: read back the size and a sample.
        try fs.remount()
        #expect(LoopFilesystem.isMounted(mountPoint))
        var st = stat()
        #expect(stat(path, &st) == 0)
        #expect(UInt64(st.st_size) == written)
        let rfd = open(path, O_RDONLY)
        var sample = [UInt8](repeating: 0, count: 4096)
        #expect(pread(rfd, &sample, 4096, 4096) == 4096)
        close(rfd)
        #expect(sample.allSatisfy { $0 == 0xA5 })

        fs.removeFiller(name: "big")
        #expect(try fs.freeBytes() >= freeBefore - 64 * 1024)

        fs.cleanup()
        fs.cleanup()  // idempotent
        #expect(!LoopFilesystem.isMounted(mountPoint))
        let procMounts = try #require(ProcFile.read("/proc/mounts"))
        #expect(!procMounts.contains(fs.root))
        #expect(!FileManager.default.fileExists(atPath: fs.root))
        let losetup = try Shell.run(["losetup", "-a"])
        #expect(!losetup.stdout.contains(fs.backingFile))
    }

    @Test func fillLeavesRequestedFreeSpace() throws {
        let fs = try LoopFilesystem(sizeMiB: 16, blockSize: 1024)
        #expect(try fs.blockSize() == 1024)
        let free = try fs.fill(leaving: 3 << 20)
        #expect(free >= 3 << 20 && free < (3 << 20) + 1024)
        // Shrinking works too.
        let more = try fs.fill(leaving: 5 << 20)
        #expect(more >= 5 << 20 && more < (5 << 20) + 1024)
        fs.removeFiller()
        #expect(try fs.freeBytes() > 12 << 20)
    }

    @Test func deinitCleansUp() throws {
        var root = ""
        var mountPoint = ""
        do {
            let fs = try LoopFilesystem(sizeMiB: 8)
            root = fs.root
            mountPoint = fs.mountPoint
            _ = try fs.makeFiller(bytes: 1 << 20)
        }
        #expect(!LoopFilesystem.isMounted(mountPoint))
        #expect(!FileManager.default.fileExists(atPath: root))
    }

    @Test func busyMountIsStillCleanedUp() throws {
        let fs = try LoopFilesystem(sizeMiB: 8)
        let fd = open(fs.path("held"), O_WRONLY | O_CREAT, 0o600)
        #expect(fd >= 0)
        fs.cleanup()  // EBUSY on every retry, then umount -l
        close(fd)
        #expect(!LoopFilesystem.isMounted(fs.mountPoint))
        #expect(!FileManager.default.fileExists(atPath: fs.root))
    }
}
