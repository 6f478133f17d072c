import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// `--nbd` parsing, the listeners it opens, and finding the activated socket by name.
@Suite struct NBDListenAddressTests {
    func parse(_ s: String) -> Result<NBDListenAddress, NBDListenAddress.ParseError> {
        Result { () throws(NBDListenAddress.ParseError) in try NBDListenAddress(parsing: s) }
    }

    @Test func parsesUnixAndTCP() {
        #expect(parse("unix:/run/x.sock") == .success(.unix(path: "/run/x.sock")))
        #expect(parse("tcp:127.0.0.1:10809") == .success(.tcp(host: "127.0.0.1", port: 10809)))
        #expect(parse("tcp:localhost:1") == .success(.tcp(host: "localhost", port: 1)))
        #expect(parse("tcp:[::1]:10809") == .success(.tcp(host: "::1", port: 10809)))
        #expect(parse("tcp::10809") == .success(.tcp(host: "", port: 10809)))
        #expect((try? NBDListenAddress(parsing: "tcp:[::1]:10809"))?.description == "tcp:[::1]:10809")
    }

    @Test func refusesMalformedAddresses() {
        for bad in [
            "", "unix:", "/tmp/x", "tcp:host", "tcp:host:0", "tcp:host:65536", "tcp:host:http", "tcp:::1:80",
            "tcp:[::1:80", "udp:x:1", "unix:" + String(repeating: "a", count: 108),
        ] {
            guard case .failure = parse(bad) else {
                Issue.record("\(bad) accepted")
                continue
            }
        }
    }

    @Test func listensOnAUnixPathReplacingOnlyAStaleSocket() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent(
            "nbd-\(getpid())-\(UInt16.random(in: 0...9999)).sock"
        ).path
        defer { unlink(path) }
        var fd: Int32 = -1
        do {
            let listener = try NBDListenAddress.unix(path: path).listen()
            fd = listener.rawValue
            #expect(clibaio_is_stream_listener(fd) == 1)
            var st = stat()
            #expect(lstat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
            // A second listener on a live path is refused.
            #expect(throws: NBDListenAddress.ParseError.self) { _ = try NBDListenAddress.unix(path: path).listen() }
        }
        // The first listener is closed now: its file is stale and is replaced.
        let again = try NBDListenAddress.unix(path: path).listen()
        #expect(clibaio_is_stream_listener(again.rawValue) == 1)
    }

    @Test func listensOnLoopbackTCP() throws {
        // Port 0 (the kernel picks one) cannot be written as --nbd, but the case can be built.
        let listener = try NBDListenAddress.tcp(host: "127.0.0.1", port: 0).listen(backlog: 1)
        #expect(clibaio_is_stream_listener(listener.rawValue) == 1)
        #expect(clibaio_local_port(listener.rawValue) > 0)
    }

    @Test func activationFindsTheFDNamedNBD() {
        let pid = String(getpid())
        let env: [String: String] = ["LISTEN_PID": pid, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "control:nbd"]
        let fds = SystemdListenFDs(environment: { env[$0] })
        #expect(fds?.fd(named: "nbd") == 4)
        #expect(fds?.fd(named: "control") == 3)
        let other: [String: String] = ["LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "nbd"]
        #expect(SystemdListenFDs(environment: { other[$0] }) == nil)
        let unnamed: [String: String] = ["LISTEN_PID": pid, "LISTEN_FDS": "1"]
        #expect(SystemdListenFDs(environment: { unnamed[$0] })?.fd(named: "nbd") == nil)
    }
}
