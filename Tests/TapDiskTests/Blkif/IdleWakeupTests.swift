import Foundation
import Glibc
import Testing

@testable import TapDisk

/// An idle daemon sleeps until something needs it (issue 17 §3): no fixed timer, so 200 idle
/// disks do not wake 400 times a second. What still needs a clock keeps one only while it does
/// (Daemon+Wakeups.swift), and the PROTOCOL's "at least once a second" checks still hold.
///
/// A wake-up is a context switch of the daemon's threads (/proc/PID/task/*/status). The old
/// 500 ms timer made 6 in 3 s; these tests allow 2 (the kernel may count one for an unrelated
/// reason, such as the test's own reads of /proc).
@Suite struct IdleWakeupTests {
    static let window = 3.0

    @Test func idleDaemonDoesNotWake() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let pid = daemon.process.processIdentifier
        let n = DaemonTest.wakeups(pid: pid, seconds: Self.window)
        #expect(n <= 2, "an idle daemon woke \(n) times in \(Self.window) s")
    }

    /// After writes (which raise no inotify event) and a truncate by someone else (which does),
    /// the quiet window ends and the daemon sleeps again, frontend attached.
    @Test func attachedDaemonSleepsAgainAfterIO() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let watcher = try daemon.client()
        try watcher.call("subscribe")
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        for i in 0..<32 { #expect(driver.roundTrip(sector: UInt64(i) * 64, seed: UInt64(i))) }
        #expect(truncate(daemon.imagePath, 32 << 20) == 0)
        #expect(try DaemonTest.nextEvent(watcher, named: "image-resized", seconds: 3) != nil)
        // The quiet window (250 ms) may cost a wake-up or two; then nothing.
        _ = DaemonTest.wakeups(pid: daemon.process.processIdentifier, seconds: 0.6)
        let n = DaemonTest.wakeups(pid: daemon.process.processIdentifier, seconds: Self.window)
        #expect(n <= 2, "an attached idle daemon woke \(n) times in \(Self.window) s")
    }

    /// PROTOCOL §1: a size change is served "checked at least once a second"; the daemon has
    /// been asleep, and inotify wakes it.
    @Test func resizeOfAnIdleDaemonsImageIsSeenWithinASecond() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let watcher = try daemon.client()
        try watcher.call("subscribe")
        _ = DaemonTest.wakeups(pid: daemon.process.processIdentifier, seconds: 1)
        let start = MonotonicClock.nanoseconds()
        #expect(truncate(daemon.imagePath, 24 << 20) == 0)
        let event = try DaemonTest.nextEvent(watcher, named: "image-resized", seconds: 1)
        let elapsed = Double(MonotonicClock.nanoseconds() - start) / 1e9
        #expect(event?["new-sectors"]?.uint64Value == (24 << 20) / 512, "no image-resized within 1 s")
        #expect(elapsed < 1, "image-resized after \(elapsed) s")
        // fallocate extends too, and is seen the same way.
        #expect(try Shell.run(["fallocate", "-l", "32M", daemon.imagePath]).status == 0)
        let grown = try DaemonTest.nextEvent(watcher, named: "image-resized", seconds: 1)
        #expect(grown?["new-sectors"]?.uint64Value == (32 << 20) / 512)
    }

    /// No inotify instance left (a user namespace whose `max_inotify_instances` is 0, as on a
    /// host with more file-backed daemons than `fs.inotify.max_user_instances`): the daemon says
    /// so and polls the size every 500 ms, so a resize is still seen within a second.
    @Test(
        .enabled(
            if: getuid() == 0 && Shell.which("unshare") != nil,
            "needs root and unshare (util-linux) for a user namespace"))
    func withoutInotifyTheSizeIsPolled() throws {
        let image = try DaemonTest.image(bytes: 16 << 20)
        defer { unlink(image) }
        let launcher = [
            "unshare", "--user", "--map-root-user", "sh", "-c",
            "echo 0 > /proc/sys/user/max_inotify_instances && exec \"$0\" \"$@\"",
        ]
        let daemon = try DaemonProcess(image: image, launcher: launcher)
        defer { daemon.forceStop() }
        #expect(daemon.log.contains("the image's size is polled every 500 ms"), "\(daemon.log)")
        let watcher = try daemon.client()
        try watcher.call("subscribe")
        let n = DaemonTest.wakeups(pid: daemon.process.processIdentifier, seconds: Self.window)
        #expect(n >= 4 && n <= 9, "\(n) wake-ups in \(Self.window) s while polling")
        #expect(truncate(image, 24 << 20) == 0)
        let event = try DaemonTest.nextEvent(watcher, named: "image-resized", seconds: 1)
        #expect(event?["new-sectors"]?.uint64Value == (24 << 20) / 512, "no image-resized within 1 s")
    }

    /// A block device served from a user namespace other than the initial one: kernel uevents
    /// would not arrive there, so the daemon polls its size instead, and a resize is still seen.
    @Test(
        .enabled(
            if: getuid() == 0 && Shell.which("unshare") != nil,
            "needs root and unshare (util-linux) for a user namespace"))
    func blockDeviceInAUserNamespaceIsPolled() throws {
        let backing = try DaemonTest.image(bytes: 8 << 20)
        defer { unlink(backing) }
        let device = try Shell.check(["losetup", "--find", "--show", backing]).trimmingCharacters(
            in: .whitespacesAndNewlines)
        defer { _ = try? Shell.run(["losetup", "-d", device]) }
        let daemon = try DaemonProcess(image: device, launcher: ["unshare", "--user", "--map-root-user"])
        defer { daemon.forceStop() }
        #expect(daemon.log.contains("not in the initial user namespace"), "\(daemon.log)")
        let watcher = try daemon.client()
        try watcher.call("subscribe")
        #expect(truncate(backing, 16 << 20) == 0)
        try Shell.check(["losetup", "-c", device])
        let event = try DaemonTest.nextEvent(watcher, named: "image-resized", seconds: 1)
        #expect(event?["new-sectors"]?.uint64Value == 32768, "no image-resized within 1 s")
    }

    /// `--low-space-threshold` keeps one sample a second (free space falls when anyone on the
    /// filesystem writes, which the daemon cannot see): about 3 wake-ups in 3 s, not 6.
    @Test func lowSpaceThresholdSamplesOnceASecond() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20, arguments: ["--low-space-threshold", "1%"])
        let n = DaemonTest.wakeups(pid: daemon.process.processIdentifier, seconds: Self.window)
        #expect(n >= 2 && n <= 5, "\(n) wake-ups in \(Self.window) s with a threshold")
    }

    /// An io-error pause ends by its timeout with nothing but the timer's deadline to wake it
    /// (debug builds: the `TAPDISK_FAULTS` seam fails the write).
    @Test func ioErrorPauseTimeoutFires() throws {
        var environment = ProcessInfo.processInfo.environment
        environment["TAPDISK_FAULTS"] = "write:EIO"
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let daemon = try DaemonProcess(
            image: image, arguments: ["--on-error", "pause", "--pause-timeout", "1"], environment: environment)
        defer { daemon.forceStop() }
        let watcher = try daemon.client()
        try watcher.call("subscribe")
        let d = try DiskDriver(socketPath: daemon.socketPath)
        d.enqueueWrite(id: 1, sector: 0, gref: 0, seed: 1)
        d.push()
        // After the attach's `running`: the pause, then the timeout's `running`.
        let paused = try stateChange(watcher, to: "paused")
        #expect(paused?["reason"] == .string("io-error"))
        let pausedAt = MonotonicClock.nanoseconds()
        let running = try stateChange(watcher, to: "running")
        let elapsed = Double(MonotonicClock.nanoseconds() - pausedAt) / 1e9
        #expect(running?["state"] == .string("running"), "the pause timeout did not end the pause")
        #expect(elapsed > 0.8 && elapsed < 3, "pause ended after \(elapsed) s")
        #expect(d.wait(forResponses: 1) && d.status(1) == -1, "the held write is answered ERROR")
    }

    private func stateChange(_ watcher: ControlClient, to state: String) throws -> JSONObject? {
        let deadline = MonotonicClock.nanoseconds() + 10_000_000_000
        while MonotonicClock.nanoseconds() < deadline {
            guard let e = try DaemonTest.nextEvent(watcher, named: "state-changed", seconds: 10) else { return nil }
            if e["state"] == .string(state) { return e }
        }
        return nil
    }
}
