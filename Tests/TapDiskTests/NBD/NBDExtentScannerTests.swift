import Foundation
import Glibc
import Testing

@testable import TapDisk

/// BLOCK_STATUS extents from a real sparse file: holes are HOLE|ZERO, data 0, the range and the
/// per-reply bound are kept.
@Suite struct NBDExtentScannerTests {
    /// A 1 MiB sparse file with data at [64 KiB, 128 KiB) and [512 KiB, 516 KiB).
    func sparseFile() throws -> Int32 {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("nbd-extents-\(UUID().uuidString)")
            .path
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        try #require(fd >= 0)
        unlink(path)
        try #require(ftruncate(fd, 1 << 20) == 0)
        let block = [UInt8](repeating: 0x5a, count: 65536)
        try #require(pwrite(fd, block, 65536, 65536) == 65536)
        try #require(pwrite(fd, block, 4096, 512 << 10) == 4096)
        fsync(fd)
        return fd
    }

    func extents(_ fd: Int32, _ offset: UInt64, _ length: UInt32, capacity: Int = 512, one: Bool = false)
        -> [NBDExtentScanner.Extent]
    {
        var out: [NBDExtentScanner.Extent] = []
        NBDExtentScanner.scan(
            fd: fd, offset: offset, length: length, minimumBlockSize: 512, capacity: capacity, requestOne: one
        ) { out.append($0) }
        return out
    }

    @Test func holesAndDataOfTheWholeFile() throws {
        let fd = try sparseFile()
        defer { close(fd) }
        let e = extents(fd, 0, 1 << 20)
        let hz: NBDBlockStatusFlags = [.hole, .zero]
        let data: NBDBlockStatusFlags = []
        let lengths: [UInt32] = [65536, 65536, (512 << 10) - (128 << 10), 4096, (1 << 20) - (516 << 10)]
        let flags = [hz, data, hz, data, hz]
        #expect(e.map(\.length) == lengths)
        #expect(e.map(\.flags) == flags)
        #expect(e.reduce(0) { $0 + UInt64($1.length) } == 1 << 20)
    }

    @Test func aRangeInsideAnExtentAndTheBounds() throws {
        let fd = try sparseFile()
        defer { close(fd) }
        #expect(extents(fd, 70 << 10, 4096) == [.init(length: 4096, flags: [])])
        #expect(extents(fd, 0, 1 << 20, capacity: 2).count == 2)
        let one = extents(fd, 0, 1 << 20, one: true)
        #expect(one == [.init(length: 65536, flags: [.hole, .zero])])
        #expect(extents(fd, 1024, 512, one: true) == [.init(length: 512, flags: [.hole, .zero])])
    }

    @Test func withoutSeekDataEverythingIsData() throws {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer {
            close(fds[0])
            close(fds[1])
        }
        #expect(extents(fds[0], 0, 8192) == [.init(length: 8192, flags: [])])
    }
}
