import CLibAIO
import Foundation
import Glibc

@testable import TapDisk

/// The NBD server the NBD suites talk to, on a unix socket, behind one switch (`underTest`).
///
/// Every NBD suite drives a real client (qemu-img, qemu-io, nbdinfo, nbdcopy, fio, libnbd, QEMU)
/// against whatever this starts, so the suites were first validated against `qemu-nbd`, the
/// server people use, and prove the same things about `tapdiskd --nbd` with only the switch
/// changed. A test that compares tapdiskd with qemu-nbd on purpose names the kind itself.
final class NBDServerProcess: @unchecked Sendable {
    enum Kind: String, Sendable {
        /// `qemu-nbd -t -f raw --cache=none --aio=native --shared=8`: the reference server.
        case qemuNBD = "qemu-nbd"
        /// `tapdiskd serve --image IMG --socket CTL --nbd unix:SOCK`: the server under test.
        case tapdiskd
    }

    /// THE switch: which server the NBD suites test by default.
    static let underTest: Kind = .tapdiskd

    /// Whether `kind` can run here; a suite's `.enabled(if:)` uses it with its own tools.
    static func available(_ kind: Kind = underTest) -> Bool {
        kind == .tapdiskd || Shell.which("qemu-nbd") != nil
    }

    let kind: Kind
    let image: String
    let directory: String
    let socketPath: String
    /// The loopback TCP port when serving over TCP (`tcp:127.0.0.1:PORT`) instead of the socket.
    let tcpPort: UInt16?
    /// The daemon, when `kind` is `.tapdiskd` (its control socket, log and counters).
    let daemon: DaemonProcess?
    private let process: Process?
    private let logPath: String

    /// The export ("" is the default export of both servers) as a libnbd/QEMU URI.
    var uri: String {
        if let tcpPort { return "nbd://127.0.0.1:\(tcpPort)/" }
        return "nbd+unix:///?socket=\(socketPath)"
    }

    /// The server's stderr and stdout so far, for failure messages.
    var log: String {
        if let daemon { return daemon.log }
        return (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    }

    var pid: Int32 { daemon?.pid ?? process?.processIdentifier ?? -1 }

    /// Starts the server on `image` and returns once it answers an NBD handshake. `arguments`
    /// go to tapdiskd only (e.g. `--on-nospace pause`), `environment` is added to the server's
    /// (e.g. `TAPDISK_FAULTS`). qemu-nbd serves up to 8 connections at once (`--shared=8`), so
    /// multi-conn clients work against both. `tcp` serves on a free loopback port instead.
    init(
        image: String, kind: Kind = underTest, arguments: [String] = [], environment: [String: String] = [:],
        tcp: Bool = false
    ) throws {
        self.kind = kind
        self.image = image
        directory = DaemonProcess.makeDirectory()
        socketPath = directory + "/nbd.sock"
        tcpPort = tcp ? try Self.freeLoopbackPort() : nil
        let listen = tcpPort.map { ["-b", "127.0.0.1", "-p", "\($0)"] } ?? ["-k", socketPath]
        logPath = directory + "/server.log"
        var merged = ProcessInfo.processInfo.environment
        merged.merge(environment) { $1 }
        switch kind {
        case .qemuNBD:
            daemon = nil
            let p = Process()
            // The test's threads block SIGTERM, and a signal mask survives exec: qemu-nbd (which
            // uses a handler, not a signalfd) would never see `stop()`'s SIGTERM. A python exec
            // clears the mask; the process id stays qemu-nbd's.
            p.executableURL = URL(fileURLWithPath: NBDClientTools.python)
            p.arguments =
                [
                    "-c",
                    "import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, []); os.execv(sys.argv[1], sys.argv[1:])",
                    Shell.which("qemu-nbd") ?? "/usr/bin/qemu-nbd", "-t", "-f", "raw", "--cache=none", "--aio=native",
                    "--shared=8",
                ] + listen + [image]
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
            p.standardOutput = FileHandle(forWritingAtPath: logPath)
            p.standardError = FileHandle(forWritingAtPath: logPath)
            p.standardInput = FileHandle.nullDevice
            p.environment = merged
            try p.run()
            process = p
        case .tapdiskd:
            process = nil
            // DaemonProcess owns the directory from here on (and answers on its control socket).
            daemon = try DaemonProcess(
                image: image,
                arguments: ["--nbd", tcpPort.map { "tcp:127.0.0.1:\($0)" } ?? "unix:" + socketPath] + arguments,
                directory: directory,
                environment: merged)
        }
        let deadline = MonotonicClock.nanoseconds() + 15_000_000_000
        while !Self.answersHandshake(connect: { [socketPath, tcpPort] in
            tcpPort.map(Self.connectLoopback) ?? clibaio_stream_connect(socketPath)
        }) {
            if let process, !process.isRunning {
                throw DaemonProcess.Failure("\(kind.rawValue) exited at startup: \(log)")
            }
            if let daemon, !daemon.process.isRunning {
                throw DaemonProcess.Failure("tapdiskd exited at startup: \(log)")
            }
            guard MonotonicClock.nanoseconds() < deadline else {
                forceStop()
                throw DaemonProcess.Failure("\(kind.rawValue) never answered on \(socketPath): \(log)")
            }
            usleep(20_000)  // paces the retries while the server starts
        }
    }

    /// Whether a server at `path` sends the fixed-newstyle greeting (`NBDMAGIC` `IHAVEOPT`); the
    /// probe then ends the handshake politely (client flags, `NBD_OPT_ABORT`) and closes.
    static func answersHandshake(connect: () -> Int32) -> Bool {
        let fd = connect()
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var greeting = [UInt8](repeating: 0, count: 18)
        var got = 0
        while got < greeting.count {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 2000) == 1 else { return false }
            let n = greeting[got...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { return false }
            got += n
        }
        guard Array(greeting[0..<16]) == Array("NBDMAGICIHAVEOPT".utf8) else { return false }
        // Client flags FIXED_NEWSTYLE | NO_ZEROES, then IHAVEOPT, NBD_OPT_ABORT (2), length 0.
        let abort: [UInt8] = [0, 0, 0, 3] + Array("IHAVEOPT".utf8) + [0, 0, 0, 2, 0, 0, 0, 0]
        _ = abort.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        return true
    }

    /// A stream socket connected to 127.0.0.1:`port`, or -errno.
    static func connectLoopback(_ port: UInt16) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return -errno }
        var address = Self.loopback(port)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if rc != 0 {
            let e = errno
            close(fd)
            return -e
        }
        return fd
    }

    /// A loopback port nobody listens on now (bound to port 0, read back, closed): the server
    /// binds it next. Another process could take it in between; nothing else here binds ports.
    static func freeLoopbackPort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Errno.current }
        defer { close(fd) }
        var address = Self.loopback(0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let rc = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 ? getsockname(fd, $0, &length) : -1
            }
        }
        guard rc == 0 else { throw Errno.current }
        return UInt16(bigEndian: address.sin_port)
    }

    private static func loopback(_ port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        return address
    }

    /// SIGTERM and wait: the exit status (nil if it did not exit in 30 s).
    @discardableResult
    func stop() -> Int32? {
        if let daemon { return daemon.terminate() }
        guard let process, process.isRunning else { return process?.terminationStatus }
        kill(process.processIdentifier, SIGTERM)
        let deadline = MonotonicClock.nanoseconds() + 30_000_000_000
        while process.isRunning && MonotonicClock.nanoseconds() < deadline { usleep(10_000) }  // polls for the exit
        return process.isRunning ? nil : process.terminationStatus
    }

    /// SIGKILL and reap: nothing outlives the fixture.
    func forceStop() {
        daemon?.forceStop()
        if let process, process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    deinit {
        forceStop()
        if daemon == nil { try? FileManager.default.removeItem(atPath: directory) }
    }
}
