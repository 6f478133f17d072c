import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// INDIRECT against the real `tapdiskd` process, attached over its socket like any frontend.
@Suite struct IndirectDaemonTests {
    @Test func advertisedAndServed() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let info = try daemon.client().call("info")
        #expect(info["features"]?.objectValue?["indirect-segments"]?.uint64Value == 256)
        let disk = try RemoteDisk(socketPath: daemon.socketPath, pageOrder: 1, dataPages: 600)
        #expect(disk.attachReply["features"]?.objectValue?["indirect-segments"]?.uint64Value == 256)
        let frontend = disk.frontend
        var responses: [UInt64: [FrontendRing.Response]] = [:]
        func wait(forResponses count: Int) -> Bool {
            let deadline = MonotonicClock.nanoseconds() + 15_000_000_000
            while responses.values.reduce(0, { $0 + $1.count }) < count {
                if MonotonicClock.nanoseconds() > deadline { return false }
                _ = disk.waitForResponses(timeoutMilliseconds: 20)
                _ = frontend.reap { responses[$0.id, default: []].append($0) }
            }
            return true
        }

        // 1 MiB in one request: 256 segments on pages 0..<256, descriptors on page 598.
        let segs = (0..<256).map { BlkifSegment(gref: UInt32($0)) }
        for s in segs { Pattern.fill(frontend.page(s.gref), bytes: 4096, seed: 7 &+ UInt64(s.gref)) }
        let written = Array(UnsafeRawBufferPointer(start: frontend.page(0), count: 1 << 20))
        frontend.enqueue(
            frontend.indirectRequest(write: true, id: 1, sector: 2048, segments: segs, descriptorPage: 598))
        // Read it back into pages 300..<556, in reverse page order, and a bad indirect_op (FLUSH).
        let back = (0..<256).map { BlkifSegment(gref: UInt32(555 - $0)) }
        frontend.page(300).initializeMemory(as: UInt8.self, repeating: 0xEE, count: 256 * 4096)
        BlkifRequest.writeDescriptors(back, to: frontend.page(599))
        frontend.push()
        #expect(wait(forResponses: 1))
        frontend.enqueue(
            BlkifRequest.indirect(indirectOperation: 0, id: 2, sector: 2048, nrSegments: 256, indirectGrefs: [599]))
        frontend.enqueue(
            BlkifRequest.indirect(indirectOperation: 3, id: 3, sector: 0, nrSegments: 1, indirectGrefs: [599]))
        frontend.push()
        #expect(wait(forResponses: 3))
        // Each answered once, with its indirect_op (the raw byte for the invalid one).
        #expect(responses[1]?.map(\.status) == [0] && responses[1]?.first?.operation == 1)
        #expect(responses[2]?.map(\.status) == [0] && responses[2]?.first?.operation == 0)
        #expect(responses[3]?.map(\.status) == [-1] && responses[3]?.first?.operation == 3)
        var readBack: [UInt8] = []
        for s in back { readBack += Array(UnsafeRawBufferPointer(start: frontend.page(s.gref), count: 4096)) }
        #expect(readBack == written)

        let c = try DaemonTest.expectInvariant(disk.control)
        #expect(c["write-requests"] == 1 && c["read-requests"] == 1 && c["invalid-requests"] == 1)
        #expect(c["write-bytes"] == 1 << 20 && c["read-bytes"] == 1 << 20)
        let rejections = try disk.control.call("stats")["counters"]?.objectValue?["rejections"]?.objectValue
        #expect(rejections?["bad-indirect-operation"]?.uint64Value == 1)
        #expect(rejections?["indirect-gref-out-of-range"]?.uint64Value == 0)
        _ = try disk.detach()
        // The image holds the 1 MiB at sector 2048.
        let fd = open(daemon.imagePath, O_RDONLY)
        defer { close(fd) }
        var onDisk = [UInt8](repeating: 0, count: 1 << 20)
        #expect(onDisk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 1 << 20, 2048 * 512) } == 1 << 20)
        #expect(onDisk == written)
    }
}
