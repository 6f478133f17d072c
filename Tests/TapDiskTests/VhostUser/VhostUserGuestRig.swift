import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// One scenario of `VhostUserGuestScenarioTests`: the real `tapdiskd` serving an image both on
/// its control socket and, with `--vhost-user-blk`, to QEMU; a Linux guest booted by
/// `scripts/guest.sh run`; and the host-side checks made once the daemon has let go of the image.
///
/// The image lives on a `LoopFilesystem` when the scenario needs a real ENOSPC, otherwise in
/// /var/tmp (the host's own filesystem: /tmp may be a tmpfs that refuses O_DIRECT). `teardown()`
/// (also run by `deinit`) stops the daemon, unmounts and removes everything, so a failing test
/// leaks nothing; QEMU never outlives `boot` (guest.sh kills it after its timeout).
final class VhostUserGuestRig {
    let fs: LoopFilesystem?
    let image: String
    let vhostSocket: String
    let daemon: DaemonProcess
    /// For `status`/`stats` while the guest runs.
    let control: ControlClient
    /// Subscribed to events from before the guest connects.
    let watcher: ControlClient
    private let ownsImage: Bool
    private var tornDown = false

    struct Failure: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    /// `loopFilesystemMiB` puts the image on a fresh ext4 of that size with `leaveFree` bytes left
    /// free (a filler file takes the rest); nil puts it in /var/tmp.
    init(imageBytes: Int, arguments: [String], loopFilesystemMiB: Int? = nil, leaveFree: UInt64? = nil) throws {
        let directory = DaemonProcess.makeDirectory()
        vhostSocket = directory + "/vhost.sock"
        var fs: LoopFilesystem? = nil
        var image = ""
        do {
            if let loopFilesystemMiB {
                let made = try LoopFilesystem(sizeMiB: loopFilesystemMiB)
                fs = made
                image = made.path("disk.img")
                let fd = open(image, O_RDWR | O_CREAT | O_EXCL, 0o600)
                guard fd >= 0 else { throw Failure("create \(image): \(Errno.current)") }
                defer { close(fd) }
                guard ftruncate(fd, off_t(imageBytes)) == 0 else { throw Failure("truncate: \(Errno.current)") }
                if let leaveFree { try made.fill(leaving: leaveFree) }
            } else {
                image = try EngineHarness.makeTemporaryImage(bytes: imageBytes)
            }
            // DaemonProcess owns `directory` from here on and removes it when it goes away.
            daemon = try DaemonProcess(
                image: image, arguments: ["--vhost-user-blk", vhostSocket] + arguments, directory: directory)
        } catch {
            fs?.cleanup()
            if fs == nil && !image.isEmpty { unlink(image) }
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        self.fs = fs
        self.image = image
        ownsImage = fs == nil
        do {
            control = try daemon.client()
            watcher = try daemon.client()
            try watcher.call("subscribe")
            // QEMU connects as the client: the listening socket must be there before it starts.
            guard DaemonTest.waitUntil(seconds: 10, { Self.isSocket(vhostSocket) }) else {
                throw Failure("no vhost-user socket at \(vhostSocket): \(daemon.log.suffix(2000))")
            }
        } catch {
            daemon.forceStop()
            fs?.cleanup()
            if ownsImage { unlink(image) }
            throw error
        }
    }

    deinit { teardown() }

    /// Stops the daemon, unmounts, removes the image.
    func teardown() {
        if tornDown { return }
        tornDown = true
        daemon.forceStop()
        fs?.cleanup()
        if ownsImage { unlink(image) }
    }

    // MARK: - The guest

    struct GuestRun {
        var status: Int32
        var console: GuestConsole
        var seconds: Double
    }

    /// Boots the guest against the daemon with `script` and returns when it powered off (or
    /// guest.sh killed QEMU after `timeoutSeconds`). `poll` runs every 50 ms meanwhile with the
    /// console so far, which is line-buffered all the way (`stdbuf -oL`: guest.sh's `tr` would
    /// otherwise hold back up to 4 KiB), so a scenario can react to what the guest prints.
    func boot(
        script: String, name: String, timeoutSeconds: Int = 120, poll: (GuestConsole) -> Void = { _ in }
    ) throws -> GuestRun {
        try Self.bootGuest(
            script: script, name: name, directory: daemon.directory,
            environment: ["TAPDISK_GUEST_TIMEOUT=\(timeoutSeconds)"], guestArguments: ["run", vhostSocket],
            poll: poll)
    }

    /// Runs `scripts/guest.sh GUESTARGUMENTS SCRIPTPATH` with `environment` and `script` written
    /// under `directory`, polling `poll` every 50 ms with the console so far until it exits. The
    /// vhost-user and the NBD rigs (NBDGuestRig) boot the same guest this way.
    static func bootGuest(
        script: String, name: String, directory: String, environment: [String], guestArguments: [String],
        poll: (GuestConsole) -> Void
    ) throws -> GuestRun {
        let scriptPath = directory + "/\(name).sh"
        let consolePath = directory + "/\(name).console"
        try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: consolePath, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: consolePath))
        defer { try? handle.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments =
            environment + [
                "stdbuf", "-oL", VhostUserGuest.repository.appendingPathComponent("scripts/guest.sh").path,
            ] + guestArguments + [scriptPath]
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        let start = MonotonicClock.nanoseconds()
        try process.run()
        let read = { GuestConsole(text: (try? String(contentsOfFile: consolePath, encoding: .utf8)) ?? "") }
        while process.isRunning {
            poll(read())
            usleep(50_000)
        }
        process.waitUntilExit()
        return GuestRun(
            status: process.terminationStatus, console: read(),
            seconds: Double(MonotonicClock.nanoseconds() - start) / 1e9)
    }

    // MARK: - The daemon

    func status() throws -> JSONObject { try control.call("status") }

    func stats(sourceLocation: SourceLocation = #_sourceLocation) throws -> DaemonTest.Counters {
        try DaemonTest.expectInvariant(control, sourceLocation: sourceLocation)
    }

    /// Every event the watcher received so far.
    func events() throws -> [JSONObject] { try DaemonTest.eventsBeforeReply(watcher) }

    /// SIGTERM; the exit status (nil if it did not exit within 30 s).
    func stopDaemon() -> Int32? { daemon.terminate() }

    // MARK: - Host-side checks (after the daemon has exited)

    /// The md5 of each of `names` (files in the root directory of the ext4 in `image`), read with
    /// debugfs: nothing is mounted and nothing written. A file that is not there maps to nil.
    static func hostChecksums(image: String, names: [String]) throws -> [String: String?] {
        let scratch = try Self.scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let commands = names.map { "dump /\($0) \(scratch)/\($0)" }.joined(separator: "\n") + "\n"
        try commands.write(toFile: scratch + "/commands", atomically: true, encoding: .utf8)
        _ = try Shell.run(["debugfs", "-f", scratch + "/commands", image], timeoutSeconds: 60)
        var sums: [String: String?] = [:]
        for name in names {
            let path = scratch + "/" + name
            guard FileManager.default.fileExists(atPath: path) else {
                sums[name] = .some(nil)
                continue
            }
            let r = try Shell.run(["md5sum", path])
            sums[name] = r.status == 0 ? String(r.stdout.prefix(32)) : .some(nil)
        }
        return sums
    }

    /// A sparse copy of `image` in a fresh scratch directory with its journal replayed
    /// (`e2fsck -E journal_only`, what a mount does first): the state a reboot of the guest would
    /// find. The copy, because the replay writes and the image's own filesystem may be full.
    /// Returns the scratch directory (the caller removes it), the copy and e2fsck's output.
    static func replayedCopy(of image: String) throws -> (directory: String, copy: String, replay: String) {
        let scratch = try Self.scratchDirectory()
        let copy = scratch + "/replayed.img"
        do {
            try Shell.check(["cp", "--sparse=always", image, copy])
            let r = try Shell.run(["e2fsck", "-E", "journal_only", "-y", copy], timeoutSeconds: 60)
            guard r.status <= 1 else { throw Failure("e2fsck -E journal_only: \(r.status) \(r.stdout)\(r.stderr)") }
            return (scratch, copy, r.stdout + r.stderr)
        } catch {
            try? FileManager.default.removeItem(atPath: scratch)
            throw error
        }
    }

    /// `e2fsck -fn`: status and output.
    static func fsck(_ image: String) throws -> (status: Int32, output: String) {
        let r = try Shell.run(["e2fsck", "-fn", image], timeoutSeconds: 60)
        return (r.status, r.stdout + r.stderr)
    }

    // MARK: - private

    private static func scratchDirectory() throws -> String {
        var template = Array("/var/tmp/tapdisk-guest-check-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Failure("mkdtemp: \(Errno.current)") }
        return String(cString: made)
    }

    private static func isSocket(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK
    }
}
