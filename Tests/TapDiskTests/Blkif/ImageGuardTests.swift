import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// One writer per image (OFD locks, O_EXCL on block devices), an image nobody changes unless
/// serving it read-write, and images whose size is not a disk.
@Suite struct ImageGuardTests {
    // MARK: - One writer per image: locking

    /// Starts a second daemon on `image` and returns its run (it must fail at once).
    func secondStart(_ image: String, readOnly: Bool) throws -> Tapdiskd.Run {
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try Tapdiskd.run(
            ["--image", image, "--socket", dir + "/second.sock"] + (readOnly ? ["--readonly"] : []), timeoutSeconds: 10)
        #expect(!FileManager.default.fileExists(atPath: dir + "/second.sock"))
        return run
    }

    @Test func aReadWriteDaemonExcludesEveryOtherUser() throws {
        let daemon = try DaemonProcess(imageBytes: 1 << 20)
        for readOnly in [false, true] {
            let run = try secondStart(daemon.imagePath, readOnly: readOnly)
            #expect(run.status == 1, "readOnly \(readOnly): \(run.stderr)")
            #expect(run.stderrLines.count == 1)
            #expect(run.stderr.contains("is locked: a read-write user"), "\(run.stderr)")
            #expect(
                run.stderr.contains(readOnly ? "refusing to serve it read-only" : "refusing to serve it read-write"))
        }
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        #expect(driver.roundTrip(sector: 0, seed: 5), "the first daemon still serves")
        // Once it exits, the lock is gone with it.
        #expect(daemon.terminate() == 0)
        let next = try DaemonProcess(image: daemon.imagePath)
        #expect(try next.client().call("info")["readonly"] == .bool(false))
        next.forceStop()
    }

    @Test func readOnlyDaemonsShareAndExcludeAWriter() throws {
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let first = try DaemonProcess(image: image, arguments: ["--readonly"])
        defer { first.forceStop() }
        let second = try DaemonProcess(image: image, arguments: ["--readonly"])
        defer { second.forceStop() }
        #expect(try second.client().call("info")["readonly"] == .bool(true))
        let writer = try secondStart(image, readOnly: false)
        #expect(writer.status == 1 && writer.stderrLines.count == 1)
        #expect(writer.stderr.contains("is locked: a read-only user"), "\(writer.stderr)")
        #expect(writer.stderr.contains("refusing to serve it read-write"))
    }

    /// A read-write block device is claimed with O_EXCL and locked: a second read-write user and a
    /// device held open exclusively elsewhere (as a mount would) are refused; read-only users share.
    @Test(.enabled(if: getuid() == 0)) func blockDevicesAreClaimedAndLocked() throws {
        let backing = try DaemonTest.image(bytes: 4 << 20)
        defer { unlink(backing) }
        let device = try Shell.check(["losetup", "--find", "--show", backing]).trimmingCharacters(
            in: .whitespacesAndNewlines)
        defer { _ = try? Shell.run(["losetup", "-d", device]) }
        do {
            let daemon = try DaemonProcess(image: device)
            defer { daemon.forceStop() }
            for readOnly in [false, true] {
                let run = try secondStart(device, readOnly: readOnly)
                #expect(run.status == 1 && run.stderrLines.count == 1, "\(run.stderr)")
                #expect(run.stderr.contains("in use") || run.stderr.contains("is locked"), "\(run.stderr)")
            }
            #expect(daemon.terminate() == 0)
        }
        // Someone else holds the device exclusively (mount, dm and md do the same).
        let holder = open(device, O_RDONLY | clibaio_O_EXCL | O_CLOEXEC)
        try #require(holder >= 0)
        let run = try secondStart(device, readOnly: false)
        #expect(run.status == 1 && run.stderrLines.count == 1)
        #expect(run.stderr.contains("block device is in use") && run.stderr.contains("EBUSY"), "\(run.stderr)")
        close(holder)
        // Read-only users share a device.
        let a = try DaemonProcess(image: device, arguments: ["--readonly"])
        defer { a.forceStop() }
        let b = try DaemonProcess(image: device, arguments: ["--readonly"])
        defer { b.forceStop() }
        #expect(try b.client().call("info")["sectors"]?.uint64Value == 8192)
    }

    // MARK: - The image is not touched unless served read-write

    struct Snapshot: Equatable {
        var bytes: Data
        var mtime: timespec
        var ctime: timespec
        var blocks: Int

        init(_ path: String) throws {
            bytes = try Data(contentsOf: URL(fileURLWithPath: path))
            var st = stat()
            guard stat(path, &st) == 0 else { throw Errno.current }
            mtime = st.st_mtim
            ctime = st.st_ctim
            blocks = Int(st.st_blocks)
        }

        static func == (a: Snapshot, b: Snapshot) -> Bool {
            a.bytes == b.bytes && a.mtime.tv_sec == b.mtime.tv_sec && a.mtime.tv_nsec == b.mtime.tv_nsec
                && a.ctime.tv_sec == b.ctime.tv_sec && a.ctime.tv_nsec == b.ctime.tv_nsec && a.blocks == b.blocks
        }
    }

    /// An image with data (so a punch would show) and an old mtime (so any change shows).
    func preparedImage() throws -> String {
        let path = try DaemonTest.image(bytes: 1 << 20)
        let fd = open(path, O_WRONLY)
        let data = Pattern.bytes(count: 1 << 20, seed: 42)
        #expect(pwrite(fd, data, data.count, 0) == data.count)
        fsync(fd)
        close(fd)
        var times = [timespec(tv_sec: 1_000_000_000, tv_nsec: 0), timespec(tv_sec: 1_000_000_000, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, path, &times, 0) == 0)
        usleep(20_000)  // past the coarse clock's tick, so a later ctime change is visible
        return path
    }

    @Test(arguments: ["none", "writeback"])
    func readOnlyServingLeavesTheImageUntouched(cache: String) throws {
        let image = try preparedImage()
        defer { unlink(image) }
        let before = try Snapshot(image)
        let daemon = try DaemonProcess(image: image, arguments: ["--readonly", "--cache", cache])
        let info = try daemon.client().call("info")
        #expect(info["readonly"] == .bool(true))
        #expect(info["features"]?["discard"] == .bool(true), "discard is still advertised (probed elsewhere)")
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        driver.enqueueRead(id: 1, sector: 0, gref: 0)
        driver.push()
        #expect(driver.wait(forResponses: 1) && driver.status(1) == 0)
        #expect(memcmp(driver.frontend.page(0), Pattern.bytes(count: 4096, seed: 42), 4096) == 0)
        #expect(daemon.terminate() == 0)
        let after = try Snapshot(image)
        #expect(after == before, "mtime \(before.mtime) -> \(after.mtime), ctime \(before.ctime) -> \(after.ctime)")
    }

    @Test func failedStartsLeaveTheImageUntouched() throws {
        let image = try preparedImage()
        defer { unlink(image) }
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let notASocket = dir + "/file"
        FileManager.default.createFile(atPath: notASocket, contents: Data("x".utf8))
        let before = try Snapshot(image)
        let cases: [[String]] = [
            ["--image", image],
            ["--image", image, "--socket", dir + "/" + String(repeating: "s", count: 120)],
            ["--image", image, "--socket", dir + "/no/such/dir/disk.sock"],
            ["--image", image, "--socket", notASocket],
            ["--image", image, "--socket", dir + "/disk.sock", "--max-ring-page-order", "9"],
            ["--image", image, "--socket", dir + "/disk.sock", "--readonly", "--cache", "bogus"],
        ]
        for args in cases {
            let run = try Tapdiskd.run(args)
            #expect(run.status != 0 && run.stderrLines.count == 1, "\(args): \(run.stderr)")
            #expect(try Snapshot(image) == before, "\(args) changed the image")
        }
    }

    // MARK: - Sizes that are not a disk

    @Test func emptyAndPartialSectorImagesAreRefused() throws {
        for (bytes, phrase) in [(0, "empty (0 bytes)"), (1000, "not a multiple of 512")] {
            let image = try DaemonTest.image(bytes: bytes)
            defer { unlink(image) }
            let dir = DaemonProcess.makeDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let run = try Tapdiskd.run(["--image", image, "--socket", dir + "/disk.sock"])
            #expect(run.status == 1 && run.stderrLines.count == 1, "\(bytes): \(run.stderr)")
            #expect(run.stderr.contains(phrase) && run.stderr.contains(image), "\(run.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/disk.sock"))
        }
    }
}
