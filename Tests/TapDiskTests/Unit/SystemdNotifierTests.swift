import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// `NOTIFY_SOCKET` is read by the C shim from the real environment, so those tests `setenv` it:
/// the suite is serialized and restores it. Watchdog and activation checks inject an environment.
@Suite(.serialized) struct SystemdNotifierTests {
    /// Binds a datagram socket in a fresh temp dir as a fake systemd, sets NOTIFY_SOCKET to it.
    private final class FakeSystemd {
        let dir: String
        let path: String
        let fd: Int32

        init() throws {
            var template = Array("/tmp/tapdisk-notify-XXXXXX".utf8CString)
            guard let made = mkdtemp(&template) else { throw Errno.current }
            dir = String(cString: made)
            path = dir + "/notify"
            fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            guard fd >= 0 else { throw Errno.current }
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in
                raw.copyBytes(from: Array(path.utf8) + [0])
            }
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            guard rc == 0 else { throw Errno.current }
            setenv("NOTIFY_SOCKET", path, 1)
        }

        /// The next datagram, or nil after a 2 s timeout.
        func receive() -> String? {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 2000) == 1 else { return nil }
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buf, buf.count, 0)
            return n < 0 ? nil : String(decoding: buf[0..<n], as: UTF8.self)
        }

        deinit {
            unsetenv("NOTIFY_SOCKET")
            close(fd)
            unlink(path)
            rmdir(dir)
        }
    }

    @Test func sendsStatesToNotifySocket() throws {
        let systemd = try FakeSystemd()
        let notifier = SystemdNotifier()
        #expect(try notifier.ready())
        #expect(systemd.receive() == "READY=1")
        #expect(try notifier.status("attached vm1\nxvdc"))
        #expect(systemd.receive() == "STATUS=attached vm1 xvdc")
        try notifier.watchdogPing()
        #expect(systemd.receive() == "WATCHDOG=1")
        try notifier.stopping()
        #expect(systemd.receive() == "STOPPING=1")
    }

    @Test func withoutNotifySocketIsANoOp() throws {
        unsetenv("NOTIFY_SOCKET")
        #expect(try SystemdNotifier().ready() == false)
    }

    @Test func unreachableSocketThrows() throws {
        setenv("NOTIFY_SOCKET", "/tmp/tapdisk-no-such-dir-\(getpid())/notify", 1)
        defer { unsetenv("NOTIFY_SOCKET") }
        #expect(throws: Errno(rawValue: ENOENT)) { try SystemdNotifier().ready() }
    }

    @Test func watchdogInterval() {
        let pid = "\(getpid())"
        let otherPid = "\(getpid() + 1)"
        func interval(_ env: [String: String]) -> Duration? {
            SystemdNotifier(environment: { env[$0] }).watchdogInterval
        }
        #expect(interval([:]) == nil)
        #expect(interval(["WATCHDOG_USEC": "20000000"]) == .seconds(20))
        #expect(interval(["WATCHDOG_USEC": "20000000", "WATCHDOG_PID": pid]) == .seconds(20))
        #expect(interval(["WATCHDOG_USEC": "20000000", "WATCHDOG_PID": otherPid]) == nil)
        #expect(interval(["WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "x"]) == nil)
        for bad in ["0", "", "-5", "abc", "1.5"] {
            #expect(interval(["WATCHDOG_USEC": bad]) == nil, "\(bad)")
        }
    }

    @Test func socketActivationChecks() throws {
        var template = Array("/tmp/tapdisk-listen-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Errno.current }
        let dir = String(cString: made)
        defer {
            unlink(dir + "/s")
            unlink(dir + "/v")
            rmdir(dir)
        }
        let seqpacket = try Errno.check(clibaio_unix_listen(dir + "/s", 4))
        defer { close(seqpacket) }
        let stream = try Errno.check(clibaio_stream_listen(dir + "/v", 4))
        defer { close(stream) }
        let dgram = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(dgram) }
        // Activated fds are consecutive: copy each arrangement to free consecutive numbers.
        func consecutive(_ fds: [Int32]) throws -> Int32 {
            var base: Int32 = 700
            while fds.indices.contains(where: { fcntl(base + Int32($0), F_GETFD) >= 0 }) { base += 10 }
            for (i, fd) in fds.enumerated() { _ = try Errno.check(dup2(fd, base + Int32(i))) }
            return base
        }
        let pid = "\(getpid())"
        typealias Sockets = SystemdNotifier.ActivatedSockets
        func check(_ fds: [Int32], _ env: [String: String]) throws -> Sockets? {
            let base = try consecutive(fds)
            defer { for i in fds.indices { close(base + Int32(i)) } }
            return SystemdNotifier.activatedSockets(firstFD: base, environment: { env[$0] }).map {
                Sockets(
                    control: $0.control.map { fds[Int($0 - base)] },
                    vhostUser: $0.vhostUser.map { fds[Int($0 - base)] },
                    nbd: $0.nbd.map { fds[Int($0 - base)] })
            }
        }
        let one = ["LISTEN_PID": pid, "LISTEN_FDS": "1"]
        let two = ["LISTEN_PID": pid, "LISTEN_FDS": "2"]
        #expect(try check([seqpacket], one) == Sockets(control: seqpacket))
        #expect(try check([stream], one) == Sockets(vhostUser: stream))
        // Either order: the type, not the position, says which socket is which.
        #expect(try check([seqpacket, stream], two) == Sockets(control: seqpacket, vhostUser: stream))
        #expect(try check([stream, seqpacket], two) == Sockets(control: seqpacket, vhostUser: stream))
        #expect(try check([seqpacket], [:]) == nil)
        #expect(try check([seqpacket], ["LISTEN_PID": "\(getpid() + 1)", "LISTEN_FDS": "1"]) == nil)
        #expect(try check([seqpacket], ["LISTEN_PID": pid]) == nil)
        #expect(try check([seqpacket, seqpacket], two) == nil)  // two control sockets
        #expect(try check([stream, stream], two) == nil)  // two vhost-user sockets
        #expect(try check([seqpacket, stream, stream], ["LISTEN_PID": pid, "LISTEN_FDS": "3"]) == nil)
        #expect(try check([dgram], one) == nil)  // wrong socket type
        #expect(try check([seqpacket, dgram], two) == nil)
        #expect(SystemdNotifier.activatedSockets(firstFD: 999, environment: { one[$0] }) == nil)  // not open
        // A stream socket named `nbd` (tapdiskd-nbd@.socket) is the NBD listener, not vhost-user's.
        #expect(try check([stream], one.merging(["LISTEN_FDNAMES": "nbd"]) { $1 }) == Sockets(nbd: stream))
        let three = ["LISTEN_PID": pid, "LISTEN_FDS": "3", "LISTEN_FDNAMES": "control:vhost:nbd"]
        #expect(
            try check([seqpacket, stream, stream], three) == Sockets(control: seqpacket, vhostUser: stream, nbd: stream)
        )
        // The name does not make a non-listening or non-stream socket one.
        #expect(try check([seqpacket], one.merging(["LISTEN_FDNAMES": "nbd"]) { $1 }) == Sockets(control: seqpacket))
    }

    /// Without activation variables for this process, the real entry point declines and leaves
    /// the environment alone.
    @Test func listenedSocketWithoutActivation() {
        if getenv("LISTEN_PID") == nil {
            #expect(SystemdNotifier.listenedSockets() == nil)
        }
    }
}
