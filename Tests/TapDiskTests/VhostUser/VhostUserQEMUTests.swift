import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The front-side layers against QEMU 7.2 (`vhost-user-blk-pci`) and a real Linux guest: the
/// guest from `scripts/guest.sh` makes ext4 on /dev/vda, writes with fsync, re-reads after
/// dropping caches and runs e2fsck — twice, over two connections to the same listener.
///
/// Needs root, qemu-system-x86_64 and the cached guest (`scripts/guest.sh build`); skipped
/// otherwise. The data path here is `VhostUserTestServer`'s synchronous one, not the engine.
@Suite(.serialized, .enabled(if: VhostUserGuest.available, "needs qemu-system-x86_64 and `scripts/guest.sh build`"))
struct VhostUserQEMUTests {
    /// Boots the guest once against `listener`, served by `server`; the console output.
    private func boot(
        _ server: VhostUserTestServer, listener: borrowing FileDescriptor, socketPath: String, log: String,
        script: String? = nil, killAfterSeconds: Int? = nil
    ) throws -> (status: Int32, output: String) {
        let process = Process()
        // env(1) sets the kill timeout for this run only.
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments =
            (killAfterSeconds.map { ["TAPDISK_GUEST_TIMEOUT=\($0)"] } ?? [])
            + [VhostUserGuest.repository.appendingPathComponent("scripts/guest.sh").path, "run", socketPath]
            + (script.map { [$0] } ?? [])
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        server.run(listener: listener.rawValue) { !process.isRunning }
        process.waitUntilExit()
        try handle.close()
        return (process.terminationStatus, (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
    }

    @Test(.timeLimit(.minutes(3))) func readOnlyDeviceServesReadsAndTheGuestCannotWrite() throws {
        let dir = "/tmp/tapdisk-vhost-ro-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let imagePath = dir + "/image"
        let imageBytes: UInt64 = 64 << 20
        #expect(FileManager.default.createFile(atPath: imagePath, contents: nil))
        #expect(truncate(imagePath, off_t(imageBytes)) == 0)
        let script = dir + "/ro.sh"
        try VhostUserGuest.readOnlyScript.write(toFile: script, atomically: true, encoding: .utf8)
        let listener = FileDescriptor(adopting: try Errno.check(clibaio_stream_listen(dir + "/sock", 1)))
        let server = try VhostUserTestServer(
            imagePath: imagePath,
            configuration: VhostUserDeviceConfiguration(
                capacitySectors: imageBytes / 512, blockSize: 512, readOnly: true))
        let (status, output) = try boot(
            server, listener: listener, socketPath: dir + "/sock", log: dir + "/ro.log", script: script)
        #expect(status == 0, "\(output.suffix(3000))")
        #expect(output.contains("ro=1") && output.contains("read-ok") && output.contains("write-refused"))
        #expect(server.errors.isEmpty, "\(server.errors)")
        #expect(server.completed["read", default: 0] > 0 && server.completed["write"] == nil)
    }

    @Test(.timeLimit(.minutes(3))) func qemuKilledMidBootLeavesTheDeviceReadyForTheNextConnection() throws {
        let dir = "/tmp/tapdisk-vhost-kill-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let imagePath = dir + "/image"
        let imageBytes: UInt64 = 256 << 20
        #expect(FileManager.default.createFile(atPath: imagePath, contents: nil))
        #expect(truncate(imagePath, off_t(imageBytes)) == 0)
        let listener = FileDescriptor(adopting: try Errno.check(clibaio_stream_listen(dir + "/sock", 1)))
        let server = try VhostUserTestServer(
            imagePath: imagePath,
            configuration: VhostUserDeviceConfiguration(
                capacitySectors: imageBytes / 512, blockSize: 512, readOnly: false))
        // `timeout` kills QEMU 6 s in: the guest is booting or already writing.
        let (killed, killedOutput) = try boot(
            server, listener: listener, socketPath: dir + "/sock", log: dir + "/killed.log", killAfterSeconds: 6)
        #expect(killed != 0, "\(killedOutput.suffix(2000))")
        #expect(!server.isConnected)
        #expect(server.completed.values.reduce(0, +) > 0)  // killed with its ring in use
        let (status, output) = try boot(server, listener: listener, socketPath: dir + "/sock", log: dir + "/after.log")
        #expect(status == 0, "\(output.suffix(3000))")
        #expect(server.connections == 2 && server.errors.isEmpty, "\(server.errors)")
    }

    @Test(.timeLimit(.minutes(5))) func linuxGuestMakesAndChecksExt4TwiceOverReconnect() throws {
        let dir = "/tmp/tapdisk-vhost-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let imagePath = dir + "/image"
        let socketPath = dir + "/sock"
        let imageBytes: UInt64 = 256 << 20
        #expect(FileManager.default.createFile(atPath: imagePath, contents: nil))
        #expect(truncate(imagePath, off_t(imageBytes)) == 0)

        let listener = FileDescriptor(adopting: try Errno.check(clibaio_stream_listen(socketPath, 1)))
        let server = try VhostUserTestServer(
            imagePath: imagePath,
            configuration: VhostUserDeviceConfiguration(
                capacitySectors: imageBytes / 512, blockSize: 512, readOnly: false))

        for run in 1...2 {
            let (status, output) = try boot(
                server, listener: listener, socketPath: socketPath, log: dir + "/guest\(run).log")
            #expect(status == 0, "run \(run):\n\(output.suffix(3000))")
            #expect(output.contains("TAPDISK-GUEST-END rc=0"), "run \(run)")
            #expect(output.contains("checksum written="), "run \(run)")
            #expect(output.contains("serial=tapdiskd"), "run \(run): GET_ID")
        }
        #expect(server.errors.isEmpty, "\(server.errors)")
        #expect(server.connections == 2)
        // What QEMU sent us: memory as SET_MEM_TABLE (no CONFIGURE_MEM_SLOTS offered), config
        // reads, ring stops; and what Linux did through the ring.
        #expect(server.requests.contains(.setMemTable) && !server.requests.contains(.addMemReg))
        #expect(server.requests.contains(.getConfig) && server.requests.contains(.getVringBase))
        // memory-backend-memfd seals its memfds: QEMU cannot shrink guest RAM under our mappings.
        #expect(!server.memoryTablesSealed.isEmpty && server.memoryTablesSealed.allSatisfy { $0 })
        #expect(server.completed["write", default: 0] > 0 && server.completed["read", default: 0] > 0)
        #expect(server.completed["flush", default: 0] > 0 && server.completed["getID", default: 0] == 2)
        #expect(!server.completed.keys.contains { $0.hasPrefix("reject") }, "\(server.completed)")
        // The image holds a clean ext4 the host can check.
        let fsck = try Shell.run(["e2fsck", "-fn", imagePath])
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
        print("vhost-user QEMU run: completed \(server.completed)")
        print("vhost-user QEMU run: requests \(server.requests.map { "\($0)" }.joined(separator: " "))")
    }
}

/// Where the cached guest lives and whether it can run here.
enum VhostUserGuest {
    static let directory = ProcessInfo.processInfo.environment["TAPDISK_GUEST_DIR"] ?? "/var/cache/tapdisk-guest"
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    static var available: Bool {
        getuid() == 0 && Shell.which("qemu-system-x86_64") != nil
            && FileManager.default.fileExists(atPath: directory + "/vmlinuz")
            && FileManager.default.fileExists(atPath: directory + "/initrd.cpio")
    }

    /// The guest sees a read-only disk (`ro=1`), reads it, and has a write refused; exits 0
    /// only if all of that held.
    static let readOnlyScript = """
        #!/bin/sh
        echo "ro=$(cat /sys/block/vda/ro)"
        dd if=/dev/vda of=/dev/null bs=64k count=16 2>/dev/null && echo read-ok
        if dd if=/dev/zero of=/dev/vda bs=4k count=1 conv=fsync 2>/dev/null; then echo write-accepted; exit 1; fi
        echo write-refused
        [ "$(cat /sys/block/vda/ro)" = 1 ]

        """
}
