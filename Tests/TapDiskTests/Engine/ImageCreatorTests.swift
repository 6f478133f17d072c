import Foundation
import Glibc
import Testing

@testable import TapDisk

@Suite struct ImageCreatorTests {
    /// A roomy scratch directory on the host's filesystem (removed with its contents afterwards).
    private final class ScratchDir {
        let path: String
        init() throws {
            var template = Array("/var/tmp/tapdisk-create-XXXXXX".utf8CString)
            guard let made = mkdtemp(&template) else { throw Errno.current }
            path = String(cString: made)
        }
        deinit { try? FileManager.default.removeItem(atPath: path) }
    }

    private func stats(_ path: String) throws -> stat {
        var st = stat()
        guard stat(path, &st) == 0 else { throw Errno.current }
        return st
    }

    @Test func offIsSparse() throws {
        let dir = try ScratchDir()
        let p = dir.path + "/off.img"
        try ImageCreator.create(path: p, sizeBytes: 64 << 20, preallocation: .off)
        let st = try stats(p)
        #expect(st.st_size == 64 << 20)
        #expect(st.st_blocks * 512 < 1 << 20)
        #expect(st.st_mode & 0o777 == 0o600)
    }

    @Test(arguments: [ImageCreator.Preallocation.falloc, .full])
    func preallocatedIsFullyAllocated(mode: ImageCreator.Preallocation) throws {
        let dir = try ScratchDir()
        let p = dir.path + "/\(mode).img"
        let size: UInt64 = 5 << 20 + 512  // not a multiple of the 1 MiB chunk
        try ImageCreator.create(path: p, sizeBytes: size, preallocation: mode)
        let st = try stats(p)
        #expect(UInt64(st.st_size) == size)
        #expect(UInt64(st.st_blocks) * 512 >= size)
        // Reads as zeros.
        let fd = open(p, O_RDONLY)
        defer { close(fd) }
        var buf = [UInt8](repeating: 0xFF, count: 4096)
        #expect(pread(fd, &buf, 4096, off_t(size) - 4096) == 4096)
        #expect(buf.allSatisfy { $0 == 0 })
    }

    @Test func refusesExistingFile() throws {
        let dir = try ScratchDir()
        let p = dir.path + "/exists.img"
        let fd = open(p, O_WRONLY | O_CREAT, 0o644)
        #expect(write(fd, "keep", 4) == 4)
        close(fd)
        do {
            try ImageCreator.create(path: p, sizeBytes: 1 << 20, preallocation: .off)
            Issue.record("overwrote an existing file")
        } catch {
            #expect(error.errno == Errno(rawValue: EEXIST))
            #expect(error.message.contains("already exists"))
            #expect(error.message.contains("overwrite"))
        }
        // Untouched, and not removed by the failure path.
        #expect(try stats(p).st_size == 4)
    }

    @Test(arguments: [UInt64(1000), 511, 513, 1_048_577, 0] as [UInt64])
    func sizeMustBeMultipleOf512(size: UInt64) throws {
        let dir = try ScratchDir()
        let p = dir.path + "/odd.img"
        do {
            try ImageCreator.create(path: p, sizeBytes: size, preallocation: .off)
            Issue.record("accepted size \(size)")
        } catch {
            #expect(error.errno == Errno(rawValue: EINVAL))
            #expect(error.message.contains(size == 0 ? "512-byte sector" : "multiple of 512"))
        }
        #expect(access(p, F_OK) != 0)
    }

    @Test func missingDirectoryIsENOENT() {
        #expect(throws: ImageCreator.CreationError.self) {
            try ImageCreator.create(path: "/nonexistent-\(getpid())/x.img", sizeBytes: 512, preallocation: .off)
        }
    }

    @Test func parentDirectory() {
        #expect(ImageCreator.parentDirectory(of: "a/b") == "a")
        #expect(ImageCreator.parentDirectory(of: "b") == ".")
        #expect(ImageCreator.parentDirectory(of: "/b") == "/")
        #expect(ImageCreator.parentDirectory(of: "/var/lib//x.img") == "/var/lib")
        #expect(ImageCreator.parentDirectory(of: "/var/lib/x/") == "/var/lib")
    }

    @Test(
        .enabled(if: LoopFilesystem.isRoot, "needs root for a loop-mounted ext4"),
        arguments: [ImageCreator.Preallocation.falloc, .full])
    func noSpaceRemovesTheFileAndGivesSpaceBack(mode: ImageCreator.Preallocation) throws {
        let fs = try LoopFilesystem(sizeMiB: 16)
        defer { fs.cleanup() }
        let before = try fs.freeBytes()
        let p = fs.path("too-big.img")
        do {
            try ImageCreator.create(path: p, sizeBytes: 64 << 20, preallocation: mode)
            Issue.record("created 64 MiB on a 16 MiB filesystem")
        } catch {
            #expect(error.errno == Errno(rawValue: ENOSPC))
            #expect(error.message.contains("removed"))
        }
        #expect(access(p, F_OK) != 0)
        fs.syncDirectory()
        let after = try fs.freeBytes()
        // Within a few blocks (directory growth, journal) of where it started.
        #expect(after + 64 * 1024 >= before, "free before \(before), after \(after)")

        // And a fitting image can still be created afterwards.
        try ImageCreator.create(path: p, sizeBytes: 4 << 20, preallocation: mode)
        #expect(try stats(p).st_size == 4 << 20)
    }
}
