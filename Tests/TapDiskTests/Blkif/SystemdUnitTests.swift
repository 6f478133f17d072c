import Foundation
import Testing

@testable import TapDisk

/// The shipped units must load cleanly and stay tightly sandboxed. `systemd-analyze` works
/// offline (no running systemd needed), so this runs in containers and CI too.
@Suite(.enabled(if: Shell.which("systemd-analyze") != nil, "systemd-analyze not installed"))
struct SystemdUnitTests {
    /// The highest acceptable "Overall exposure level" of `systemd-analyze security`.
    static let maximumExposure = 2.0

    /// Repository root, from this file's location (Tests/TapDiskTests/Blkif/SystemdUnitTests.swift).
    static let repoRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { url.deleteLastPathComponent() }
        return url.path
    }()

    static var unitDir: String { repoRoot + "/systemd" }

    /// The shipped services, all socket-activated: the ring daemon, the vhost-user-blk one and the NBD one.
    static let services = ["tapdiskd@.service", "tapdiskd-vhost@.service", "tapdiskd-nbd@.service"]
    /// Every unit whose sandbox is scored, the exporter included.
    static let scoredServices = services + ["tapdisk-exporter.service"]

    /// `verify` insists that ExecStart's binary exists. The installed path usually does not exist
    /// on a build machine, so the units are verified from a copy whose ExecStart names the freshly
    /// built `tapdiskd` (or, if that is missing, any executable: the unit syntax is what is tested).
    static func executableForVerify() -> String {
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments.first ?? "").deletingLastPathComponent().path + "/tapdiskd",
            repoRoot + "/.build/debug/tapdiskd",
            repoRoot + "/.build/release/tapdiskd",
            "/usr/local/bin/tapdiskd",
        ]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/bin/true"
    }

    @Test func unitsVerify() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent(
            "tapdisk-units-\(getpid())-\(UUID().uuidString)"
        ).path
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        for name in Self.services {
            let service = try String(contentsOfFile: Self.unitDir + "/" + name, encoding: .utf8)
            #expect(service.contains("ExecStart=/usr/local/bin/tapdiskd "), "\(name)")
            try service.replacingOccurrences(
                of: "ExecStart=/usr/local/bin/tapdiskd ", with: "ExecStart=\(Self.executableForVerify()) "
            )
            .write(toFile: tmp + "/" + name, atomically: true, encoding: .utf8)
        }
        for socket in ["tapdiskd@.socket", "tapdiskd-vhost@.socket", "tapdiskd-nbd@.socket"] {
            try FileManager.default.copyItem(atPath: Self.unitDir + "/" + socket, toPath: tmp + "/" + socket)
        }

        let r = try Shell.run([
            "systemd-analyze", "verify", "--man=no", tmp + "/tapdiskd@ci.service", tmp + "/tapdiskd@ci.socket",
            tmp + "/tapdiskd-vhost@ci.service", tmp + "/tapdiskd-vhost@ci.socket",
            tmp + "/tapdiskd-nbd@ci.service", tmp + "/tapdiskd-nbd@ci.socket",
        ])
        #expect(r.status == 0, "\(r.stderr)")
        // verify only warns (exit 0) about unknown keys or unparsable values: treat any warning
        // about our units as a failure. Lines about unrelated system units are not ours to fix.
        let ours = r.stderr.split(separator: "\n").filter { $0.contains("tapdiskd") }
        #expect(ours.isEmpty, "\(ours.joined(separator: "\n"))")
    }

    @Test(arguments: SystemdUnitTests.scoredServices) func serviceExposureIsAtMost2(name: String) throws {
        let r = try Shell.run([
            "systemd-analyze", "security", "--offline=true", "--no-pager", Self.unitDir + "/" + name,
        ])
        #expect(r.status == 0, "\(r.stderr)")
        let line = try #require(
            r.stdout.split(separator: "\n").first { $0.contains("Overall exposure level") }, "\(r.stdout)\n\(r.stderr)")
        // "→ Overall exposure level for tapdiskd@i.service: 0.7 SAFE 😀"
        let afterColon = try #require(line.split(separator: ":").last)
        let number = try #require(afterColon.split(separator: " ").first.flatMap { Double($0) }, "\(line)")
        #expect(number <= Self.maximumExposure, "\(line)")
    }

    @Test func socketIsSeqpacketAndPrivate() throws {
        let socket = try String(contentsOfFile: Self.unitDir + "/tapdiskd@.socket", encoding: .utf8)
        #expect(socket.contains("ListenSequentialPacket=/run/tapdisk/%i.sock"))
        #expect(socket.contains("SocketMode=0600"))
        #expect(socket.contains("RemoveOnStop=yes"))
        let service = try String(contentsOfFile: Self.unitDir + "/tapdiskd@.service", encoding: .utf8)
        for key in [
            "Type=notify", "NotifyAccess=main", "Restart=on-failure", "EnvironmentFile=/etc/tapdisk/%i.conf",
            "Requires=tapdiskd@%i.socket", "RestrictAddressFamilies=AF_UNIX",
        ] {
            #expect(service.contains(key), "\(key)")
        }
        #expect(service.contains("WatchdogSec="))
    }

    /// QEMU is pointed at the vhost socket and the toolstack at the control socket, both held by
    /// the socket unit (so a restarted daemon takes them over) in a runtime directory that every
    /// disk's instance shares and none may remove; the per-disk configuration is the same file
    /// the ring daemon's unit reads.
    @Test func vhostServiceListensWhereQEMUConnects() throws {
        let socket = try String(contentsOfFile: Self.unitDir + "/tapdiskd-vhost@.socket", encoding: .utf8)
        for key in [
            "ListenSequentialPacket=/run/tapdiskd/%i.sock", "ListenStream=/run/tapdiskd/%i.vhost.sock",
            "SocketMode=0600", "DirectoryMode=0700", "Service=tapdiskd-vhost@%i.service",
        ] {
            #expect(socket.contains(key), "\(key)")
        }
        let service = try String(contentsOfFile: Self.unitDir + "/tapdiskd-vhost@.service", encoding: .utf8)
        let execStart = try #require(service.split(separator: "\n").first { $0.hasPrefix("ExecStart=") })
        #expect(execStart.contains("--image ${TAPDISK_IMAGE}") && execStart.contains("$TAPDISK_ARGS"))
        // Paths on the command line would make a daemon started without its socket unit create
        // socket files of its own that the next restart cannot take over.
        #expect(!execStart.contains("--socket") && !execStart.contains("--vhost-user-blk"), "\(execStart)")
        for key in [
            "Type=notify", "NotifyAccess=main", "Restart=on-failure", "EnvironmentFile=/etc/tapdisk/%i.conf",
            "ConditionPathExists=/etc/tapdisk/%i.conf", "RuntimeDirectory=tapdiskd", "RuntimeDirectoryPreserve=yes",
            "RestrictAddressFamilies=AF_UNIX", "MemoryDenyWriteExecute=yes", "Requires=tapdiskd-vhost@%i.socket",
        ] {
            #expect(service.contains(key), "\(key)")
        }
    }

    /// The NBD socket passes its listener by the name the daemon looks for, and the service gets
    /// it by activation (no --nbd) while keeping the control socket where the tools look.
    @Test func nbdUnitsPassTheListenerNamedNBD() throws {
        let socket = try String(contentsOfFile: Self.unitDir + "/tapdiskd-nbd@.socket", encoding: .utf8)
        for key in [
            "ListenStream=/run/tapdiskd/%i.nbd.sock", "FileDescriptorName=\(NBDListenAddress.activationName)\n",
            "SocketMode=0600", "Service=tapdiskd-nbd@%i.service",
        ] {
            #expect(socket.contains(key), "\(key)")
        }
        let service = try String(contentsOfFile: Self.unitDir + "/tapdiskd-nbd@.service", encoding: .utf8)
        let execStart = try #require(service.split(separator: "\n").first { $0.hasPrefix("ExecStart=") })
        #expect(execStart.contains("--socket /run/tapdiskd/%i.sock") && !execStart.contains("--nbd"))
        for key in ["Requires=tapdiskd-nbd@%i.socket", "Type=notify", "RestrictAddressFamilies=AF_UNIX"] {
            #expect(service.contains(key), "\(key)")
        }
    }

    /// The exporter's unit loads cleanly, reads the sockets both daemon units create, and can
    /// reach them and the network but nothing else.
    @Test func exporterUnitVerifies() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent(
            "tapdisk-units-\(getpid())-\(UUID().uuidString)"
        ).path
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let name = "tapdisk-exporter.service"
        let service = try String(contentsOfFile: Self.unitDir + "/" + name, encoding: .utf8)
        let installed = "ExecStart=/usr/local/bin/tapdisk-exporter "
        #expect(service.contains(installed))
        let built =
            URL(fileURLWithPath: Self.executableForVerify()).deletingLastPathComponent().path
            + "/tapdisk-exporter"
        let executable = FileManager.default.isExecutableFile(atPath: built) ? built : "/bin/true"
        try service.replacingOccurrences(of: installed, with: "ExecStart=\(executable) ")
            .write(toFile: tmp + "/" + name, atomically: true, encoding: .utf8)
        let r = try Shell.run(["systemd-analyze", "verify", "--man=no", tmp + "/" + name])
        #expect(r.status == 0, "\(r.stderr)")
        let ours = r.stderr.split(separator: "\n").filter { $0.contains("tapdisk-exporter") }
        #expect(ours.isEmpty, "\(ours.joined(separator: "\n"))")
        let execStart = try #require(service.split(separator: "\n").first { $0.hasPrefix("ExecStart=") })
        for part in ["--sockets /run/tapdisk/", "--sockets /run/tapdiskd/", "--listen ${TAPDISK_EXPORTER_LISTEN}"] {
            #expect(execStart.contains(part), "\(part)")
        }
        for key in [
            "CapabilityBoundingSet=\n", "ProtectSystem=strict", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        ] {
            #expect(service.contains(key), "\(key)")
        }
    }
}
