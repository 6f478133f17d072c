import CLibAIO
import Glibc
import Logging

/// The per-disk daemon: one thread, one epoll, serving one image to at most one frontend.
///
/// Every source the disk reacts to (the kick eventfd, the AIO completion eventfd, the control
/// socket and its connections, the image watch, a deadline timer, signals) is a token in one
/// epoll set, and each wakeup runs to completion before the next sleep. Control commands
/// therefore see the engine between requests, never in the middle of one, and no lock exists
/// anywhere. The timer is armed only while something is due without an fd saying so
/// (Daemon+Wakeups.swift): an idle daemon sleeps until something needs it.
package final class Daemon: DiskLoopHost {
    package struct StartError: Error, CustomStringConvertible {
        package var description: String
    }

    /// The daemon's own epoll tokens (the engine's kick and completion tokens are `DiskLoop`'s).
    enum Token {
        static let listener: UInt64 = DiskLoop.Token.firstHostToken
        static let timer: UInt64 = DiskLoop.Token.firstHostToken + 1
        static let signals: UInt64 = DiskLoop.Token.firstHostToken + 2
        static let vhostListener: UInt64 = DiskLoop.Token.firstHostToken + 3
        static let vhostConnection: UInt64 = DiskLoop.Token.firstHostToken + 4
        static let imageWatch: UInt64 = DiskLoop.Token.firstHostToken + 5
        static let nbdListener: UInt64 = DiskLoop.Token.firstHostToken + 6
        static let firstConnection: UInt64 = 100
    }

    let config: DaemonConfiguration
    let engine: Engine
    var logger: Logger
    let loop: DiskLoop
    let listener: FileDescriptor
    /// The socket file this process created and removes at exit if it is still the same file
    /// (nil under activation).
    private let ownedSocket: SocketFile?
    private var ownedSocketPath: String? { ownedSocket?.path }
    let timer: FileDescriptor
    let signals: FileDescriptor
    let notifier = SystemdNotifier()
    private let startNanos = MonotonicClock.nanoseconds()

    var connections: [UInt64: ControlConnection] = [:]
    /// The control connection limit, the reserve fd and the EMFILE back-off.
    let admission: ConnectionAdmission
    var nextToken = Token.firstConnection
    /// The connection that attached the current frontend.
    var owner: UInt64? = nil
    /// SIGTERM/SIGINT arrived: drain like `detach`, then exit 0.
    var terminating = false
    /// `--vhost-user-blk`: the listening socket, its file, the connected front-end (at most
    /// one), and a message waiting for the drain it needs (Daemon+VhostUser.swift).
    let vhostListener: FileDescriptor?
    /// Its fd, or -1 (a raw copy: the owner cannot be borrowed out of an optional in a class).
    let vhostListenerFD: Int32
    private let vhostSocket: SocketFile?
    var vhostConnection: FileDescriptor? = nil
    var parkedVhostMessage: VhostUserMessage? = nil
    /// `--nbd` (or an activated listener named `nbd`): the listener, the transmission phase
    /// (allocated once: it outlives NBD attaches), and the clients still in their handshake
    /// (Daemon+NBD.swift).
    let nbdListenerFD: Int32
    let nbd: NBDTransmission?
    var nbdHandshakes: [Int32: NBDHandshakeClient] = [:]
    var nbdConnectionOfFD: [Int32: Int] = [:]
    private var rateLimiter = IOErrorRateLimiter()
    var lowSpaceArmed = true
    /// inotify (a file) or uevents (a block device) for size changes; nil: the size is polled.
    let imageWatch: ImageWatch?
    /// Set while the image watch is out of epoll after an event (a quiet window, so a stream of
    /// DISCARDs or another process's writes wakes the daemon at most every 250 ms for it).
    var imageWatchQuietUntilNanos: UInt64? = nil
    /// The absolute time the one-shot timer is armed for (0: disarmed).
    var armedDeadlineNanos: UInt64 = 0
    var lastPeriodicNanos: UInt64 = 0
    var lastWatchdogNanos: UInt64 = 0
    /// Half of systemd's `WATCHDOG_USEC`, read once (nil: no watchdog).
    let watchdogPingNanos: UInt64?
    /// Under systemd (`NOTIFY_SOCKET`): the status line is worth refreshing.
    let notifiesSystemd: Bool
    var lastStatusNanos: UInt64 = 0
    /// The counters the last status line showed: refreshed only when they moved.
    var statusCounters: (responses: UInt64, inFlight: UInt64, held: UInt64) = (0, 0, 0)
    /// Allocated last in `init`, after everything that can throw: a class whose init throws
    /// before every property is set never runs `deinit`, so an earlier allocation would leak on
    /// every failed start (LeakSanitizer found it: scripts/test.sh --sanitize address).
    let receiveBuffer: UnsafeMutableRawBufferPointer

    /// Checks the socket path, opens the image and binds the socket. Every check that needs
    /// nothing created runs before the image is opened, and the socket comes last, so a daemon
    /// that fails to start creates no socket file (§1) and has not touched the image.
    package init(config: DaemonConfiguration, logger: Logger) throws(StartError) {
        self.config = config
        self.logger = logger
        // Every fd the hard limit allows: control connections, attach fds and the reserve.
        let files = ConnectionAdmission.raiseFileLimit()
        logger.debug("file descriptor limit", metadata: ["soft": "\(files.soft)", "hard": "\(files.hard)"])
        admission = ConnectionAdmission(limit: config.maxControlConnections)
        let activated =
            SystemdNotifier.activatedSockets(firstFD: 3, environment: SystemdNotifier.processEnvironment)
            ?? SystemdNotifier.ActivatedSockets()
        if activated.control == nil {
            guard let path = config.socketPath else {
                throw StartError(description: "--socket PATH is required (or start under systemd socket activation)")
            }
            _ = try SocketFile.check(path)
        }
        if activated.vhostUser == nil, let vhost = config.vhostUserSocketPath { _ = try Self.checkVhostUserPath(vhost) }
        watchdogPingNanos = notifier.watchdogInterval.map {
            UInt64($0.components.seconds) * 500_000_000 + UInt64($0.components.attoseconds / 2_000_000_000)
        }
        notifiesSystemd = getenv("NOTIFY_SOCKET") != nil
        let image: Image
        do {
            image = try Image(path: config.imagePath, cache: config.cache, readOnly: config.readOnly)
        } catch {
            throw StartError(description: error.description)
        }
        do {
            engine = try Engine(image: image, policy: config.policy, maxRingPageOrder: config.maxRingPageOrder)
        } catch {
            let events = Int(RingLayout.entries(pageOrder: config.maxRingPageOrder))
            throw StartError(description: AIOLimit.setupFailure(error, events: events, limit: AIOLimit.current()))
        }
        do throws(Errno) {
            imageWatch = try ImageWatch(image: engine.image)
        } catch {
            imageWatch = nil
            logger.warning(
                "the image's size is polled every 500 ms",
                metadata: [
                    "image": "\(config.imagePath)",
                    "reason": "\(ImageWatch.fallbackReason(error, isBlockDevice: engine.geometry.isBlockDevice))",
                ])
        }
        do {
            loop = try DiskLoop(engine: engine)
            loop.pollNanos = config.pollMicroseconds * 1000
            timer = FileDescriptor(adopting: try Errno.check(clibaio_timerfd_oneshot()))
            var sigs: [Int32] = [SIGTERM, SIGINT]
            signals = FileDescriptor(adopting: try Errno.check(clibaio_signalfd(&sigs, 2)))
        } catch {
            throw StartError(description: "cannot set up the event loop: \(error)")
        }
        #if TAPDISK_FAULT_INJECTION
            if let spec = getenv("TAPDISK_FAULTS").map({ String(cString: $0) }), !spec.isEmpty {
                do {
                    engine.faults = try FaultInjector(specification: spec)
                } catch {
                    throw StartError(description: "TAPDISK_FAULTS=\(spec): not a fault specification")
                }
                logger.warning("injecting faults (debug build)", metadata: ["TAPDISK_FAULTS": "\(spec)"])
            }
            if let text = getenv("TAPDISK_ROUNDS_PER_SERVICE").map({ String(cString: $0) }) {
                guard let rounds = Int(text), rounds > 0 else {
                    throw StartError(description: "TAPDISK_ROUNDS_PER_SERVICE=\(text): not a positive integer")
                }
                engine.roundsPerService = rounds
            }
        #endif
        if let cpus = config.cpus {
            let rc = clibaio_set_affinity(cpus.map { Int32($0) }, Int32(cpus.count))
            guard rc == 0 else {
                throw StartError(
                    description: "--cpu \(cpus.map(String.init).joined(separator: ",")): \(Errno(rawValue: -rc))")
            }
        }
        signal(SIGPIPE, SIG_IGN)
        let listened = SystemdNotifier.listenedSockets()
        if let fd = listened?.control {
            listener = FileDescriptor(adopting: fd)
            ownedSocket = nil
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        } else {
            guard let path = config.socketPath else {
                throw StartError(description: "--socket PATH is required (or start under systemd socket activation)")
            }
            listener = try Self.listen(at: path)
            ownedSocket = SocketFile(boundAt: path)
        }
        if let fd = listened?.vhostUser {
            // The supervisor's listener: the socket file is its to keep across restarts.
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            vhostListenerFD = fd
            vhostListener = FileDescriptor(adopting: fd)
            vhostSocket = nil
        } else if let path = config.vhostUserSocketPath {
            let fd: FileDescriptor
            do throws(StartError) {
                fd = try Self.listenVhostUser(at: path)
            } catch {
                ownedSocket?.removeIfStillOurs()
                throw error
            }
            vhostListenerFD = fd.rawValue
            vhostListener = consume fd
            vhostSocket = SocketFile(boundAt: path)
        } else {
            vhostListener = nil
            vhostListenerFD = -1
            vhostSocket = nil
        }
        do throws(StartError) {
            let opened = try Self.openNBD(config: config, engine: engine, activated: listened?.nbd)
            nbd = opened.transmission
            nbdListenerFD = opened.listener
        } catch {
            ownedSocket?.removeIfStillOurs()
            vhostSocket?.removeIfStillOurs()
            throw error
        }
        do {
            if nbdListenerFD >= 0 { try loop.add(nbdListenerFD, token: Token.nbdListener) }
            try loop.add(listener.rawValue, token: Token.listener)
            try loop.add(timer.rawValue, token: Token.timer)
            try loop.add(signals.rawValue, token: Token.signals)
            if vhostListenerFD >= 0 { try loop.add(vhostListenerFD, token: Token.vhostListener) }
            if let imageWatch { try loop.add(imageWatch.fd.rawValue, token: Token.imageWatch) }
        } catch {
            ownedSocket?.removeIfStillOurs()
            vhostSocket?.removeIfStillOurs()
            throw StartError(description: "epoll: \(error)")
        }
        engine.setLimits(config.limits)
        receiveBuffer = .allocate(byteCount: ControlRequest.maxDatagramSize + 1, alignment: 8)
        engine.onEvent = { [unowned self] event in self.engineEvent(event) }
    }

    deinit {
        receiveBuffer.deallocate()
    }

    /// Binds the control socket, replacing a stale socket file but never a live daemon's.
    private static func listen(at path: String) throws(StartError) -> FileDescriptor {
        if try SocketFile.check(path) == .stale { unlink(path) }
        let fd = clibaio_unix_listen(path, 64)
        guard fd >= 0 else { throw StartError(description: "cannot listen on \(path): \(Errno(rawValue: -fd))") }
        return FileDescriptor(adopting: fd)
    }

    // MARK: - The loop

    /// Serves until SIGTERM/SIGINT has drained the disk. Returns the exit status.
    package func run() -> Int32 {
        _ = try? notifier.ready()
        sendStatus()
        logger.info(
            "serving",
            metadata: [
                "image": "\(config.imagePath)", "socket": "\(ownedSocketPath ?? "(socket activation)")",
                "sectors": "\(engine.image.geometry.sectors)", "cache": "\(config.cache.rawValue)",
                "vhost-user-blk": "\(vhostListenerFD < 0 ? "none" : vhostSocket?.path ?? "(socket activation)")",
                "nbd": "\(nbd == nil ? "none" : config.nbdAddress?.description ?? "activated")",
            ])
        armTimer()
        while !(terminating && !engine.isAttached) {
            loop.step(self)
        }
        _ = try? notifier.stopping()
        vhostSocket?.removeIfStillOurs()
        if let ownedSocket, !ownedSocket.removeIfStillOurs() {
            logger.warning(
                "the socket path is no longer this daemon's socket file; left in place",
                metadata: ["socket": "\(ownedSocket.path)"])
        }
        logger.info("exiting", metadata: ["image": "\(config.imagePath)"])
        return 0
    }

    /// A ready source of the daemon's own (`DiskLoop` handles the engine's kick and completions).
    package func dispatch(_ ready: Poller.Ready) {
        switch ready.token {
        case Token.listener: acceptConnections()
        case Token.vhostListener: acceptVhostUser()
        case Token.vhostConnection: readVhostUser()
        case Token.imageWatch: imageWatchFired()
        case Token.nbdListener: acceptNBD()
        case let token where token & Self.nbdSocketTokenBit != 0: dispatchNBD(ready)
        case Token.timer:
            var expirations: UInt64 = 0
            _ = read(timer.rawValue, &expirations, 8)
            armedDeadlineNanos = 0
            periodic()
        case Token.signals:
            while true {
                let sig = clibaio_signalfd_read(signals.rawValue)
                guard sig > 0 else { break }
                beginTermination(signal: sig)
            }
        default:
            guard let connection = connections[ready.token] else { return }
            if ready.events & clibaio_EPOLLOUT != 0 { flush(connection) }
            if connection.deferred != nil {
                // Not reading until the owed reply is sent; a full hang-up (always reported by
                // epoll) means that reply can never be delivered, so the connection goes now.
                if ready.events & (clibaio_EPOLLHUP | clibaio_EPOLLERR) != 0 { connection.isClosed = true }
            } else if ready.isReadable || ready.isHangup {
                readRequests(connection)
            }
        }
    }

    /// After each wakeup: owed replies whose condition now holds, a finished drain, closed peers.
    ///
    /// Sending an owed reply resumes reading that connection, which may leave a new owed reply
    /// whose condition already holds (a client answering `pause` with `resume`, `pause`, or
    /// `detach` at once): settling repeats until nothing changes. The connection no longer
    /// watches EPOLLIN then, so nothing else would wake the loop for it. A client that keeps this going past the round limit gets its reply on the next
    /// (zero-timeout) iteration, so other fds are not starved: the return value tells the loop.
    package func finishWakeup() -> Bool {
        for _ in 0..<8 where answerOwedReplies() {}
        if vhostListenerFD >= 0 { settleVhostUser() }
        settleNBD()
        for (token, connection) in connections where connection.isClosed {
            closeConnection(token)
        }
        armTimer()
        return owedRepliesAreDue
    }

    func beginTermination(signal: Int32) {
        logger.notice("signal \(signal == SIGTERM ? "SIGTERM" : "SIGINT"): draining and exiting")
        if !terminating {
            terminating = true
            _ = try? notifier.stopping()
        }
        if nbdListenerFD >= 0 { loop.remove(nbdListenerFD) }
        terminateNBD()
        if engine.isAttached && engine.state != .closing { engine.beginDetach() }
    }

    // MARK: - Engine events → subscribers and the log

    private func engineEvent(_ event: EngineEvent) {
        switch event {
        case .ioError(let operation, let errno, let action, let sector):
            guard
                let suppressed = rateLimiter.admit(
                    operation: operation, errno: errno.rawValue, nowNanos: MonotonicClock.nanoseconds())
            else { return }
            logger.error(
                "I/O error",
                metadata: [
                    "image": "\(config.imagePath)", "operation": "\(operation)", "sector": "\(sector)",
                    "errno": "\(errno.name)", "action": "\(action.rawValue)", "suppressed": "\(suppressed)",
                ])
            broadcast(
                event: "io-error",
                [
                    "operation": .string(operation), "errno": .string(errno.name),
                    "errno-value": .int(Int64(errno.rawValue)),
                    "nospace": .bool(errno.isNoSpace), "action": .string(action.rawValue), "sector": .uint(sector),
                    "suppressed": .uint(suppressed),
                ])
        case .stateChanged(let state):
            logger.notice(
                "state \(state.name)",
                metadata: ["image": "\(config.imagePath)", "reason": "\(state.reason ?? "none")"])
            broadcast(
                event: "state-changed",
                ["state": .string(state.name), "reason": state.reason.map { .string($0) } ?? .null])
            sendStatus()
        case .frontendViolation(let message):
            logger.error("frontend violation: \(message)", metadata: ["image": "\(config.imagePath)"])
            broadcast(event: "frontend-violation", ["message": .string(message)])
        }
    }

    var uptimeSeconds: Double { Double(MonotonicClock.nanoseconds() - startNanos) / 1e9 }
}
