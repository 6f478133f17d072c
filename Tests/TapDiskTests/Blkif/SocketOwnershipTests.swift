import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// A daemon removes its socket file at exit only while the path still names the file it bound,
/// and what is already at the socket path is named correctly.
@Suite struct SocketOwnershipTests {
    /// Start A on S, remove S, start B on S, SIGTERM A: S must survive and B must still answer.
    @Test func exitingDaemonLeavesAnotherDaemonsSocketAlone() throws {
        let a = try DaemonProcess(imageBytes: 1 << 20)
        defer { a.forceStop() }
        #expect(unlink(a.socketPath) == 0)
        let otherImage = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(otherImage) }
        let b = try DaemonProcess(image: otherImage, directory: a.directory)
        defer { b.forceStop() }
        #expect(a.socketPath == b.socketPath)
        #expect(a.terminate() == 0)
        #expect(FileManager.default.fileExists(atPath: b.socketPath), "A removed B's socket file")
        #expect(try b.client().call("info")["image"] == .string(otherImage))
        #expect(b.terminate() == 0)
        #expect(!FileManager.default.fileExists(atPath: b.socketPath), "B removes its own socket")
    }

    /// A SEQPACKET listener that is not tapdiskd is "something", not "a live tapdiskd".
    @Test func foreignSeqpacketListenerIsNotCalledTapdiskd() throws {
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/disk.sock"
        let foreign = clibaio_unix_listen(path, 4)
        try #require(foreign >= 0)
        defer { close(foreign) }
        let run = try Tapdiskd.run(["--image", image, "--socket", path])
        #expect(run.status == 1)
        #expect(run.stderrLines.count == 1)
        #expect(run.stderr.contains("something is already listening"), "\(run.stderr)")
        #expect(!run.stderr.contains("tapdiskd is already serving"))
    }

    /// A live tapdiskd is named as one, with its image.
    @Test func liveTapdiskdIsNamedWithItsImage() throws {
        let first = try DaemonProcess(imageBytes: 1 << 20)
        defer { first.forceStop() }
        let other = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(other) }
        let run = try Tapdiskd.run(["--image", other, "--socket", first.socketPath])
        #expect(run.status == 1 && run.stderrLines.count == 1)
        #expect(run.stderr.contains("a live tapdiskd is already serving"), "\(run.stderr)")
        #expect(run.stderr.contains(first.imagePath))
    }

    /// A tapdiskd at its connection limit refuses the probe with `busy`: still a live tapdiskd.
    @Test func liveTapdiskdAtItsConnectionLimitIsStillNamed() throws {
        let first = try DaemonProcess(imageBytes: 1 << 20, arguments: ["--max-control-connections", "16"])
        defer { first.forceStop() }
        // Fill all 16 slots. The fixture's own probe connection may still hold one: a refused
        // client is dropped and tried again until 16 are admitted.
        var holders: [ControlClient] = []
        DaemonTest.waitUntil(seconds: 5) {
            if let c = try? first.client(), (try? c.request("info"))?["ok"] == .bool(true) { holders.append(c) }
            return holders.count == 16
        }
        try #require(holders.count == 16)
        let other = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(other) }
        let run = try Tapdiskd.run(["--image", other, "--socket", first.socketPath])
        #expect(run.status == 1 && run.stderrLines.count == 1)
        #expect(
            run.stderr.contains("a live tapdiskd is already serving") && run.stderr.contains("busy"), "\(run.stderr)")
    }

    /// A stream or datagram socket at the path: EPROTOTYPE by name and meaning, never "E91".
    @Test(arguments: [Int32(SOCK_STREAM.rawValue), Int32(SOCK_DGRAM.rawValue)])
    func socketOfAnotherTypeIsNamed(type: Int32) throws {
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/disk.sock"
        let fd = socket(AF_UNIX, type, 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() { raw[i] = b }
        }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        try #require(bound == 0)
        if type == Int32(SOCK_STREAM.rawValue) { try #require(Glibc.listen(fd, 4) == 0) }
        let run = try Tapdiskd.run(["--image", image, "--socket", path])
        #expect(run.status == 1 && run.stderrLines.count == 1)
        #expect(run.stderr.contains("EPROTOTYPE"), "\(run.stderr)")
        #expect(run.stderr.contains("not a SEQPACKET socket"))
        #expect(!run.stderr.contains("E91"))
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK, "the other socket is left in place")
    }
}
