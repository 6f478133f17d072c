import CLibAIO
import Glibc

/// The daemon's side of systemd's service protocol (`sd_notify(3)`, `sd_listen_fds(3)`), without
/// linking libsystemd.
///
/// `Type=notify` lets the toolstack's `systemctl start` return only once the socket accepts
/// frontends and the image is open, and `WatchdogSec=` restarts a daemon whose event loop hung.
/// Every call is a no-op (returning false) when `NOTIFY_SOCKET` is unset, so the same binary runs
/// unchanged outside systemd.
package struct SystemdNotifier: Sendable {
    /// Reads an environment variable. Injected by tests so they need not `setenv` while other
    /// threads may be reading the process environment.
    package typealias Environment = @Sendable (String) -> String?

    private let environment: Environment

    package init() { self.init(environment: Self.processEnvironment) }

    package init(environment: @escaping Environment) { self.environment = environment }

    /// `READY=1`: startup finished (socket listening, image open).
    @discardableResult
    package func ready() throws(Errno) -> Bool { try send("READY=1") }

    /// `STATUS=...`: a one-line human status shown by `systemctl status`. Newlines are replaced
    /// because a newline would start a new (unintended) assignment in the datagram.
    @discardableResult
    package func status(_ text: String) throws(Errno) -> Bool {
        let line = String(text.map { $0 == "\n" || $0 == "\r" ? " " : $0 })
        return try send("STATUS=" + line)
    }

    /// `STOPPING=1`: shutdown began, so systemd does not mistake the exit for a crash.
    @discardableResult
    package func stopping() throws(Errno) -> Bool { try send("STOPPING=1") }

    /// `WATCHDOG=1`: the event loop is alive. The caller pings at half of `watchdogInterval`.
    @discardableResult
    package func watchdogPing() throws(Errno) -> Bool { try send("WATCHDOG=1") }

    /// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`), or nil when the
    /// watchdog is off, malformed, zero, or meant for another process (`WATCHDOG_PID`).
    package var watchdogInterval: Duration? {
        guard let usecText = environment("WATCHDOG_USEC"), let usec = UInt64(usecText), usec > 0 else {
            return nil
        }
        if let pidText = environment("WATCHDOG_PID") {
            guard let pid = Int32(pidText), pid == getpid() else { return nil }
        }
        return .microseconds(Int64(clamping: usec))
    }

    /// Sends one raw assignment list. Returns true when a datagram was sent, false when there is
    /// no `NOTIFY_SOCKET` (not under systemd). A thrown errno is for the caller to log as a
    /// warning, never a reason to stop serving I/O.
    @discardableResult
    package func send(_ state: String) throws(Errno) -> Bool {
        try Errno.check(clibaio_sd_notify(state)) == 0
    }

    /// The listening sockets systemd passed by socket activation, told apart by type: the
    /// control socket is `SOCK_SEQPACKET`, the vhost-user socket `SOCK_STREAM`; a stream socket
    /// named `nbd` (`FileDescriptorName=nbd`, tapdiskd-nbd@.socket) is the NBD listener instead.
    package struct ActivatedSockets: Equatable, Sendable {
        package var control: Int32? = nil
        package var vhostUser: Int32? = nil
        package var nbd: Int32? = nil

        package init(control: Int32? = nil, vhostUser: Int32? = nil, nbd: Int32? = nil) {
            self.control = control
            self.vhostUser = vhostUser
            self.nbd = nbd
        }
    }

    /// The sockets systemd (or a supervisor doing what systemd does) passed, or nil.
    ///
    /// Taking the vhost-user listener from the supervisor is what lets a restart keep the socket
    /// QEMU reconnects to: the new daemon accepts from the same queue the old one listened on
    /// (docs/operations.md, "Restarting and upgrading a vhost-user disk"). Accepted only when the
    /// fds are meant for this process (`LISTEN_PID`), there are one or two (`LISTEN_FDS`) and
    /// each is a listening `AF_UNIX` socket of a kind not already seen, so a misconfigured unit
    /// falls back to `--socket`/`--vhost-user-blk` (or fails there) instead of serving on the
    /// wrong kind of socket. The variables are then removed so children never believe the fds
    /// are theirs. Call it at startup, before other threads exist (it modifies the environment).
    package static func listenedSockets() -> ActivatedSockets? {
        guard let sockets = activatedSockets(firstFD: 3, environment: processEnvironment) else { return nil }
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
        // systemd hands the fds over without FD_CLOEXEC; nothing we exec should inherit them.
        for fd in [sockets.control, sockets.vhostUser, sockets.nbd].compactMap({ $0 }) {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        return sockets
    }

    /// The checks of `listenedSockets()` without side effects, for fds from `firstFD` (3 in
    /// production, `SD_LISTEN_FDS_START`) and a given environment.
    package static func activatedSockets(firstFD: Int32, environment: Environment) -> ActivatedSockets? {
        guard let pidText = environment("LISTEN_PID"), let pid = Int32(pidText), pid == getpid(),
            let countText = environment("LISTEN_FDS"), let count = Int32(countText), (1...3).contains(count)
        else { return nil }
        var sockets = ActivatedSockets()
        let names = environment("LISTEN_FDNAMES")?.split(separator: ":", omittingEmptySubsequences: false) ?? []
        for fd in firstFD..<(firstFD + count) {
            let index = Int(fd - firstFD)
            if index < names.count, names[index] == NBDListenAddress.activationName[...], sockets.nbd == nil,
                clibaio_is_stream_listener(fd) == 1
            {
                sockets.nbd = fd
                continue
            }
            switch clibaio_unix_listener_type(fd) {
            case Int32(SOCK_SEQPACKET.rawValue) where sockets.control == nil: sockets.control = fd
            case Int32(SOCK_STREAM.rawValue) where sockets.vhostUser == nil: sockets.vhostUser = fd
            default: return nil
            }
        }
        return sockets
    }

    /// The real process environment.
    package static let processEnvironment: Environment = { name in
        guard let p = getenv(name) else { return nil }
        return String(cString: p)
    }
}
