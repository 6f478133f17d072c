import CLibAIO
import Foundation
import Testing

@testable import TapDisk

/// The daemon process with `--nbd`, driven by real clients (qemu-io, nbdinfo) and by a minimal
/// client of our own that holds a connection open. A smoke test of the front's wiring; the broad
/// real-client suites live beside it.
@Suite(
    .serialized,
    .enabled(if: Shell.which("qemu-io") != nil && Shell.which("nbdinfo") != nil, "qemu-io or nbdinfo missing"))
struct NBDDaemonSmokeTests {
    static func daemon() throws -> (DaemonProcess, String) {
        let directory = DaemonProcess.makeDirectory()
        let socket = directory + "/nbd.sock"
        let d = try DaemonProcess(imageBytes: 64 << 20, arguments: ["--nbd", "unix:" + socket], directory: directory)
        return (d, "nbd+unix:///?socket=" + socket)
    }

    enum Connection: Equatable {
        case transmission(Int32)
        case refused(NBDOptionReplyType)
    }

    /// Connects and completes `NBD_OPT_GO` for the default export; returns the socket (blocking),
    /// or the option reply type that refused it.
    static func connect(_ path: String) throws -> Connection {
        let fd = clibaio_stream_connect(path)
        try #require(fd >= 0)
        func readExactly(_ n: Int) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: n)
            var got = 0
            while got < n {
                let r = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, n - got, 0) }
                if r <= 0 { return Array(out.prefix(got)) }
                got += r
            }
            return out
        }
        _ = readExactly(18)
        var out: [UInt8] = []
        NBDWire.append(UInt32(3), to: &out)
        let data = NBDHandshakeDriver.goData()
        NBDWire.append(NBDMagic.option, to: &out)
        NBDWire.append(NBDOption.go.rawValue, to: &out)
        NBDWire.append(UInt32(data.count), to: &out)
        out += data
        _ = out.withUnsafeBytes { send(fd, $0.baseAddress!, $0.count, 0) }
        while true {
            let header = readExactly(20)
            try #require(header.count == 20, "the daemon closed the handshake")
            let type = NBDOptionReplyType(rawValue: NBDWire.read(UInt32.self, from: header[...], at: 12)!)
            _ = readExactly(Int(NBDWire.read(UInt32.self, from: header[...], at: 16)!))
            if type == .ack { return .transmission(fd) }
            if type.isError {
                close(fd)
                return .refused(type)
            }
        }
    }

    @Test func qemuIOWritesAndReadsBackAndNbdinfoMapsTheAllocation() throws {
        let (daemon, uri) = try Self.daemon()
        let io = try Shell.run(
            ["qemu-io", "-f", "raw", uri, "-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M", "-c", "flush"],
            timeoutSeconds: 60)
        #expect(
            io.status == 0 && !io.stdout.contains("failed") && !io.stdout.contains("mismatch"),
            "\(io.stdout)\(io.stderr)")
        let map = try Shell.run(["nbdinfo", "--map", uri], timeoutSeconds: 30)
        #expect(map.status == 0, "\(map.stderr)")
        let lines = map.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
        #expect(lines.count == 2, "\(map.stdout)")
        #expect(lines.first.map { Array($0.prefix(3)) } == ["0", "1048576", "0"], "\(map.stdout)")
        #expect(lines.last.map { Array($0.prefix(3)) } == ["1048576", "66060288", "3"], "\(map.stdout)")
        let stats = try daemon.client().call("stats")
        #expect((stats["counters"]?["write-requests"]?.int64Value ?? 0) >= 1)
        #expect(daemon.log.contains("NBD client connected") && daemon.log.contains("NBD client disconnected"))
    }

    /// NBD and a ring exclude each other: a connected NBD client makes `attach` busy, and an
    /// attached ring makes `NBD_OPT_GO` answer NBD_REP_ERR_POLICY; each works again once the
    /// other has gone.
    @Test func nbdClientsAndARingExcludeEachOther() throws {
        let (daemon, _) = try Self.daemon()
        let path = daemon.directory + "/nbd.sock"
        guard case .transmission(let fd) = try Self.connect(path) else {
            Issue.record("NBD refused on an idle disk")
            return
        }
        let status = try daemon.client().call("status")
        #expect(status["front"]?.stringValue == "nbd")
        #expect(status["nbd"]?["clients"]?.arrayValue?.count == 1)
        #expect(throws: (any Error).self) { _ = try DiskDriver(socketPath: daemon.socketPath) }
        close(fd)
        // The client's departure detaches the NBD front; then a ring may attach.
        #expect(
            DaemonTest.waitUntil(seconds: 10) { (try? daemon.client().call("status"))?["attached"]?.boolValue == false }
        )
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        #expect(try Self.connect(path) == .refused(.policy))
        _ = try driver.disk.detach()
        guard case .transmission(let again) = try Self.connect(path) else {
            Issue.record("NBD refused after the ring detached")
            return
        }
        close(again)
    }
}
