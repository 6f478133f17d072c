import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The daemon's side of systemd: socket activation (`LISTEN_FDS`) and sd_notify, checked against
/// the real binary with systemd's own `systemd-socket-activate` and a notify socket of our own.
@Suite struct SystemdIntegrationTests {
    static var hasSocketActivate: Bool {
        FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-socket-activate")
    }

    @Test(.enabled(if: hasSocketActivate)) func socketActivation() throws {
        let image = try EngineHarness.makeTemporaryImage(bytes: 4 << 20)
        defer { unlink(image) }
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/activated.sock"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-socket-activate")
        process.arguments = ["--seqpacket", "-l", socket, DaemonProcess.binary, "--image", image]
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer {
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }
        var client: ControlClient? = nil
        for _ in 0..<300 where client == nil {
            client = try? ControlClient(socketPath: socket)
            if client == nil { usleep(10_000) }
        }
        let c = try #require(client)
        let info = try c.call("info")
        #expect(info["image"]?.stringValue == image)
        let disk = try RemoteDisk(socketPath: socket, pageOrder: 0, dataPages: 4)
        #expect(DiskDriver(disk).roundTrip(sector: 0, seed: 5))
        _ = try disk.detach()
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        // Under activation the socket file belongs to systemd: the daemon leaves it alone.
        #expect(FileManager.default.fileExists(atPath: socket))
    }

    @Test func notifiesReadyStatusWatchdogAndStopping() throws {
        let image = try EngineHarness.makeTemporaryImage(bytes: 4 << 20)
        defer { unlink(image) }
        let dir = DaemonProcess.makeDirectory()
        let notifyPath = dir + "/notify.sock"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in notifyPath.utf8.enumerated() { raw[i] = b }
        }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        #expect(bound == 0)
        var env = ProcessInfo.processInfo.environment
        env["NOTIFY_SOCKET"] = notifyPath
        env["WATCHDOG_USEC"] = "1000000"
        let daemon = try DaemonProcess(image: image, directory: dir, environment: env)
        var messages: [String] = []
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline && !messages.contains("WATCHDOG=1") {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buf, buf.count, 0)
            if n > 0 { messages.append(String(decoding: buf[0..<n], as: UTF8.self)) }
        }
        #expect(messages.first == "READY=1")
        #expect(messages.contains { $0.hasPrefix("STATUS=state=idle") })
        #expect(messages.contains("WATCHDOG=1"))
        daemon.signal(SIGTERM)
        #expect(daemon.waitForExit() == 0)
        var rest: [String] = []
        while true {
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT))
            if n <= 0 { break }
            rest.append(String(decoding: buf[0..<n], as: UTF8.self))
        }
        #expect(rest.contains("STOPPING=1"))
    }
}
