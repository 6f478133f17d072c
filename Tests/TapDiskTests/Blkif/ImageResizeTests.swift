import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The image changes size while attached. A shrink raises `image-resized`,
/// requests beyond the new end are answered ERROR and the file is never extended by the
/// daemon; a growth is served and reported.
@Suite struct ImageResizeTests {
    static func size(_ path: String) -> Int64 {
        var st = stat()
        return stat(path, &st) == 0 ? Int64(st.st_size) : -1
    }

    @Test func shrinkIsNoticedAndRequestsBeyondTheNewEndFail() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let watcher = try daemon.client()
        try watcher.call("subscribe")
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        #expect(driver.roundTrip(sector: 20_000, seed: 1), "beyond 8 MiB works before the shrink")
        #expect(truncate(daemon.imagePath, 8 << 20) == 0)
        let event = try DaemonTest.nextEvent(watcher, named: "image-resized", seconds: 3)
        #expect(event?["old-sectors"]?.uint64Value == 32768)
        #expect(event?["new-sectors"]?.uint64Value == 16384)
        #expect(event?["shrunk"] == .bool(true))
        #expect(try watcher.call("info")["sectors"]?.uint64Value == 16384)
        let before = try DaemonTest.stats(watcher)
        let base = driver.responseCount
        driver.enqueueRead(id: 1, sector: 20_000, gref: 2)
        driver.enqueueWrite(id: 2, sector: 20_000, gref: 3, seed: 9)
        driver.enqueueWrite(id: 3, sector: 16_384 - 8, gref: 4, seed: 9)  // the last 4 KiB: fine
        driver.enqueueWrite(id: 4, sector: 16_384 - 4, gref: 5, seed: 9)  // straddles the end
        driver.push()
        #expect(driver.wait(forResponses: base + 4))
        #expect(driver.status(1) == -1 && driver.status(2) == -1 && driver.status(4) == -1)
        #expect(driver.status(3) == 0)
        #expect(Self.size(daemon.imagePath) == 8 << 20, "the daemon never extends the file")
        let after = try DaemonTest.expectInvariant(watcher)
        #expect(after["invalid-requests"] == before["invalid-requests"] + 3, "refused without I/O")
        #expect(daemon.log.contains("image shrank"))
    }

    @Test func growthIsServedAndReported() throws {
        let daemon = try DaemonProcess(imageBytes: 8 << 20)
        let watcher = try daemon.client()
        try watcher.call("subscribe")
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        driver.enqueueRead(id: 1, sector: 20_000, gref: 0)
        driver.push()
        #expect(driver.wait(forResponses: 1) && driver.status(1) == -1, "beyond the end before growing")
        #expect(truncate(daemon.imagePath, 16 << 20) == 0)
        let event = try DaemonTest.nextEvent(watcher, named: "image-resized", seconds: 3)
        #expect(event?["old-sectors"]?.uint64Value == 16384 && event?["new-sectors"]?.uint64Value == 32768)
        #expect(event?["shrunk"] == .bool(false))
        #expect(try watcher.call("info")["sectors"]?.uint64Value == 32768)
        #expect(driver.roundTrip(sector: 20_000, seed: 4), "the new space is served")
        // A new attachment sees the new size too.
        _ = try driver.disk.detach()
        let again = try DiskDriver(socketPath: daemon.socketPath)
        #expect(again.roundTrip(sector: 32_000, seed: 5))
    }

    /// A block device that grows (an extended LV; here a loop device given a new capacity).
    @Test(.enabled(if: getuid() == 0)) func blockDeviceGrowthIsReported() throws {
        let backing = try DaemonTest.image(bytes: 8 << 20)
        defer { unlink(backing) }
        let device = try Shell.check(["losetup", "--find", "--show", backing]).trimmingCharacters(
            in: .whitespacesAndNewlines)
        defer { _ = try? Shell.run(["losetup", "-d", device]) }
        let daemon = try DaemonProcess(image: device)
        defer { daemon.forceStop() }
        let watcher = try daemon.client()
        try watcher.call("subscribe")
        #expect(truncate(backing, 16 << 20) == 0)
        try Shell.check(["losetup", "-c", device])
        let event = try DaemonTest.nextEvent(watcher, named: "image-resized", seconds: 3)
        #expect(event?["old-sectors"]?.uint64Value == 16384 && event?["new-sectors"]?.uint64Value == 32768)
        #expect(try watcher.call("info")["sectors"]?.uint64Value == 32768)
    }
}
