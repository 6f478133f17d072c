import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// `--vhost-user-blk PATH` at start-up: every refusal is one line and exit 1, comes before the
/// image is opened, leaves no control socket behind and never replaces what is not ours; a stale
/// socket file is replaced.
@Suite struct VhostUserSocketStartupTests {
    private func start(_ vhost: String, in dir: String) throws -> (status: Int32, stderr: String) {
        let image = dir + "/image"
        if !FileManager.default.fileExists(atPath: image) {
            FileManager.default.createFile(atPath: image, contents: nil)
            truncate(image, 1 << 20)
        }
        let r = try Shell.run(
            [DaemonProcess.binary, "--image", image, "--socket", dir + "/ctl.sock", "--vhost-user-blk", vhost],
            timeoutSeconds: 10)
        return (r.status, r.stderr)
    }

    @Test func refusalsLeaveNothingBehind() throws {
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A regular file at the path: not replaced.
        let file = dir + "/not-a-socket"
        FileManager.default.createFile(atPath: file, contents: Data("keep".utf8))
        let notSocket = try start(file, in: dir)
        #expect(notSocket.status == 1 && notSocket.stderr.contains("exists and is not a socket"), "\(notSocket)")
        #expect((try? String(contentsOfFile: file, encoding: .utf8)) == "keep")
        // Too long for sockaddr_un.
        let long = dir + "/" + String(repeating: "v", count: 120)
        let tooLong = try start(long, in: dir)
        #expect(tooLong.status == 1 && tooLong.stderr.contains("longer than AF_UNIX allows"), "\(tooLong)")
        // Something listening there: left alone.
        let live = dir + "/live.sock"
        let listener = FileDescriptor(adopting: try Errno.check(clibaio_stream_listen(live, 1)))
        let busy = try start(live, in: dir)
        #expect(busy.status == 1 && busy.stderr.contains("already listening"), "\(busy)")
        _ = listener
        for r in [notSocket, tooLong, busy] { #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)") }
        #expect(!FileManager.default.fileExists(atPath: dir + "/ctl.sock"), "a refused start left its control socket")
        // Refused before the image was opened: a missing image is not what it complains about.
        let noImage = try Shell.run(
            [
                DaemonProcess.binary, "--image", dir + "/missing", "--socket", dir + "/ctl.sock", "--vhost-user-blk",
                file,
            ])
        #expect(noImage.status == 1 && noImage.stderr.contains("exists and is not a socket"), "\(noImage)")
    }

    @Test func staleSocketFileIsReplaced() throws {
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let stale = dir + "/vhost.sock"
        // Bound, then closed: the file stays, nobody listens.
        close(try Errno.check(clibaio_stream_listen(stale, 1)))
        let image = try EngineHarness.makeTemporaryImage(bytes: 1 << 20)
        defer { unlink(image) }
        let d = try DaemonProcess(image: image, arguments: ["--vhost-user-blk", stale], directory: dir)
        let probe = clibaio_stream_connect(stale)
        #expect(probe >= 0, "the daemon is not listening on the replaced socket: \(Errno(rawValue: -probe))")
        if probe >= 0 { close(probe) }
        d.signal(SIGTERM)
        #expect(d.waitForExit() == 0)
        #expect(!FileManager.default.fileExists(atPath: stale), "the daemon left its vhost-user socket")
    }
}
