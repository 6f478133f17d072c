import CLibAIO
import Glibc
import Logging

/// The per-disk daemon: one thread, one epoll, serving one image to at most one frontend.
///
/// Every source the disk reacts to (the kick eventfd, the AIO completion eventfd, the control
/// socket and its connections, a 500 ms timer, signals) is a token in one epoll set, and each
/// wakeup runs to completion before the next sleep. Control commands therefore see the engine
/// between requests, never in the middle of one, and no lock exists anywhere.
package final class Daemon: DiskLoopHost {
    package struct StartError: Error, CustomStringConvertible {
        package var description: String
    }

    /// The daemon's own epoll tokens (the engine's kick and completion tokens are `DiskLoop`'s).
    enum Token {
        static let listener: UInt64 = DiskLoop.Token.firstHostToken
        static let timer: UInt64 = DiskLoop.Token.firstHostToken + 1
        static let signals: UInt64 = DiskLoop.Token.firstHostToken + 2
        static let firstConnection: UInt64 = 100
    }

    let config: DaemonConfiguration
    let engine: Engine
    var logger: Logger
    let loop: DiskLoop
    private let listener: FileDescriptor
    /// The socket file this process created and removes at exit if it is still the same file
    /// (nil under activation).
    private let ownedSocket: SocketFile?
    private var ownedSocketPath: String? { ownedSocket?.path }
    private let timer: FileDescriptor
    private let signals: FileDescriptor
    private let notifier = SystemdNotifier()
    private let startNanos = MonotonicClock.nanoseconds()

    var connections: [UInt64: ControlConnection] = [:]
    /// The control connection limit, the reserve fd and the EMFILE back-off.
    let admission: ConnectionAdmission
    private var nextToken = Token.firstConnection
    /// The connection that attached the current frontend.
    var owner: UInt64? = nil
    /// SIGTERM/SIGINT arrived: drain like `detach`, then exit 0.
    private var terminating = false
    private var rateLimiter = IOErrorRateLimiter()
    private var lowSpaceArmed = true
    private var lastWatchdogNanos: UInt64 = 0
    private var lastStatusNanos: UInt64 = 0
    private let receiveBuffer = UnsafeMutableRawBufferPointer.allocate(
        byteCount: ControlRequest.maxDatagramSize + 1, alignment: 8)

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
        let activated = SystemdNotifier.activatedSocket(fd: 3, environment: SystemdNotifier.processEnvironment) != nil
        if !activated {
            guard let path = config.socketPath else {
                throw StartError(description: "--socket PATH is required (or start under systemd socket activation)")
            }
            _ = try SocketFile.check(path)
        }
        let image: Image
        do {
            image = try Image(path: config.imagePath, cache: config.cache, readOnly: config.readOnly)
        } catch {
            throw StartError(description: error.description)
        }
        do {
            engine = try Engine(image: image, policy: config.policy, maxRingPageOrder: config.maxRingPageOrder)
            loop = try DiskLoop(engine: engine)
            loop.pollNanos = config.pollMicroseconds * 1000
            timer = FileDescriptor(adopting: try Errno.check(clibaio_timerfd_periodic(500)))
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
        if activated, let fd = SystemdNotifier.listenedSocket() {
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
        do {
            try loop.add(listener.rawValue, token: Token.listener)
            try loop.add(timer.rawValue, token: Token.timer)
            try loop.add(signals.rawValue, token: Token.signals)
        } catch {
            ownedSocket?.removeIfStillOurs()
            throw StartError(description: "epoll: \(error)")
        }
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
            ])
        while !(terminating && !engine.isAttached) {
            loop.step(self)
        }
        _ = try? notifier.stopping()
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
        case Token.timer:
            var expirations: UInt64 = 0
            _ = read(timer.rawValue, &expirations, 8)
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
    /// watches EPOLLIN then, so nothing else would wake the loop for it before the next timer
    /// tick. A client that keeps this going past the round limit gets its reply on the next
    /// (zero-timeout) iteration, so other fds are not starved: the return value tells the loop.
    package func settle() -> Bool {
        for _ in 0..<8 {
            var progressed = false
            if engine.state == .closing && engine.isDrained {
                completeDetach()
                progressed = true
            }
            for connection in connections.values {
                if case .pause(let tag) = connection.deferred, engine.isQuiescent {
                    connection.deferred = nil
                    reply(connection, ControlReply.ok(tag: tag))
                    readRequests(connection)
                    progressed = true
                }
            }
            if !progressed { break }
        }
        for (token, connection) in connections where connection.isClosed {
            closeConnection(token)
        }
        return (engine.state == .closing && engine.isDrained)
            || connections.values.contains { c in
                if case .pause = c.deferred { return engine.isQuiescent }
                return false
            }
    }

    private func completeDetach() {
        let responsesBefore: UInt64? = connections.values.lazy.compactMap { c -> UInt64? in
            if case .detach(_, let start) = c.deferred { return start }
            return nil
        }.first
        let completedBase = responsesBefore ?? engine.counters.responses
        let reqCons = loop.finishDetach()
        owner = nil
        let completed = engine.counters.responses - completedBase
        for connection in connections.values {
            guard case .detach(let tag, _) = connection.deferred else { continue }
            connection.deferred = nil
            reply(
                connection,
                ControlReply.ok(fields: ["completed": .uint(completed), "req-cons": .uint(UInt64(reqCons))], tag: tag))
            readRequests(connection)
        }
        logger.info("detached", metadata: ["image": "\(config.imagePath)", "req-cons": "\(reqCons)"])
    }

    private func beginTermination(signal: Int32) {
        logger.notice("signal \(signal == SIGTERM ? "SIGTERM" : "SIGINT"): draining and exiting")
        if !terminating {
            terminating = true
            _ = try? notifier.stopping()
        }
        if engine.isAttached && engine.state != .closing { engine.beginDetach() }
    }

    /// The 500 ms timer: pause timeout and auto-resume, image size, listener back-off,
    /// low-space, watchdog, status.
    private func periodic() {
        let now = MonotonicClock.nanoseconds()
        engine.tick(nowNanos: now)
        checkImageSize()
        if admission.shouldResumeListening(nowNanos: now) {
            try? loop.add(listener.rawValue, token: Token.listener)
        }
        checkLowSpace()
        if let interval = notifier.watchdogInterval {
            let half =
                UInt64(interval.components.seconds) * 500_000_000
                + UInt64(interval.components.attoseconds / 2_000_000_000)
            if now &- lastWatchdogNanos >= half {
                lastWatchdogNanos = now
                _ = try? notifier.watchdogPing()
            }
        }
        if now &- lastStatusNanos >= 5_000_000_000 { sendStatus() }
    }

    private func checkLowSpace() {
        guard let threshold = config.lowSpaceThreshold, let space = engine.image.filesystemSpace() else { return }
        let limit = threshold.thresholdBytes(filesystemSizeBytes: space.totalBytes)
        if space.freeBytes < limit {
            if lowSpaceArmed {
                lowSpaceArmed = false
                logger.warning(
                    "low space",
                    metadata: [
                        "image": "\(config.imagePath)", "fs-free-bytes": "\(space.freeBytes)",
                        "threshold-bytes": "\(limit)",
                    ])
                broadcast(
                    event: "low-space", ["fs-free-bytes": .uint(space.freeBytes), "threshold-bytes": .uint(limit)])
            }
        } else if space.freeBytes > limit {
            lowSpaceArmed = true
        }
    }

    private func sendStatus() {
        lastStatusNanos = MonotonicClock.nanoseconds()
        let c = engine.counters
        let text =
            "state=\(engine.state.name)\(engine.state.reason.map { "(\($0))" } ?? "") io-status=\(engine.ioStatus.rawValue) in-flight=\(c.inFlight) held=\(c.held) ok=\(c.responsesOkay) error=\(c.responsesError)"
        _ = try? notifier.status(text)
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

    func broadcast(event name: String, _ fields: JSONObject) {
        for connection in connections.values where connection.subscribed && !connection.isClosed {
            if connection.outbox.count >= ControlConnection.eventQueueLimit {
                connection.droppedEvents += 1
                continue
            }
            let dropped = connection.droppedEvents
            connection.droppedEvents = 0
            send(connection, ControlReply.event(name: name, fields: fields, dropped: dropped > 0 ? dropped : nil))
        }
    }

    // MARK: - Connections

    private func acceptConnections() {
        for _ in 0..<64 {
            let fd = clibaio_accept(listener.rawValue)
            if fd < 0 {
                if -fd == EMFILE || -fd == ENFILE { outOfFileDescriptors(Errno(rawValue: -fd)) }
                if -fd == ECONNABORTED || -fd == EINTR { continue }
                return
            }
            guard connections.count < admission.limit else {
                if admission.refuseOverLimit(fd) {
                    logger.warning(
                        "control connection limit reached; refusing new connections with busy",
                        metadata: ["limit": "\(admission.limit)"])
                }
                continue
            }
            if let refused = admission.admitted() {
                logger.notice("file descriptors available again", metadata: ["refused": "\(refused)"])
            }
            let token = nextToken
            nextToken += 1
            let connection = ControlConnection(fd: FileDescriptor(adopting: fd), token: token)
            do {
                try loop.add(fd, token: token, events: clibaio_EPOLLIN | clibaio_EPOLLRDHUP)
            } catch {
                continue
            }
            connections[token] = connection
        }
    }

    /// accept failed with EMFILE/ENFILE: refuse what waits through the reserve fd, then stop
    /// watching the listener until a later timer tick (`periodic`) instead of spinning on it.
    private func outOfFileDescriptors(_ errno: Errno) {
        if admission.beginExhaustion() {
            logger.warning(
                "out of file descriptors: refusing control connections and backing off",
                metadata: [
                    "errno": "\(errno.name)", "connections": "\(connections.count)",
                    "reserve": "\(admission.hasReserve)",
                ])
        }
        var refused = 0
        while refused < 64, admission.refuseWithReserve(listener: listener.rawValue) { refused += 1 }
        loop.remove(listener.rawValue)
        admission.pauseListening(nowNanos: MonotonicClock.nanoseconds())
    }

    /// Reads and answers datagrams until the socket is empty or a reply must wait.
    private func readRequests(_ connection: ControlConnection) {
        var budget = 64
        while budget > 0, connection.deferred == nil, !connection.isClosed {
            budget -= 1
            var fds = [Int32](repeating: -1, count: 8)
            var nfds: Int32 = 0
            var flags: Int32 = 0
            let n = clibaio_recv_datagram(
                connection.fd.rawValue, receiveBuffer.baseAddress, receiveBuffer.count, &fds, 8, &nfds, &flags)
            if n < 0 {
                if -n != EAGAIN && -n != EINTR { connection.isClosed = true }
                break
            }
            let received = Array(fds.prefix(Int(min(nfds, 8))))
            defer { for fd in received { close(fd) } }
            if n == 0 && received.isEmpty && clibaio_peer_hung_up(connection.fd.rawValue) == 1 {
                connection.isClosed = true
                break
            }
            if n > ControlRequest.maxDatagramSize || flags & clibaio_MSG_TRUNC != 0 {
                reply(connection, ControlReply.error(.badRequest("datagram larger than 65536 bytes"), tag: nil))
                continue
            }
            if n == 0 {
                reply(connection, ControlReply.error(.badRequest("empty datagram"), tag: nil))
                continue
            }
            let bytes = UnsafeRawBufferPointer(rebasing: receiveBuffer[0..<n])
            switch ControlRequest.parse(bytes) {
            case .failure(let failure):
                reply(connection, ControlReply.error(failure))
            case .success(let request):
                handle(
                    request, from: connection, fds: received,
                    controlTruncated: flags & clibaio_MSG_CTRUNC != 0 || nfds > 8)
            }
        }
        // The peer hung up and nothing more is queued for reading: close after this batch.
        if !connection.isClosed, connection.deferred == nil, clibaio_peer_hung_up(connection.fd.rawValue) == 1 {
            var probe: UInt8 = 0
            if recv(connection.fd.rawValue, &probe, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) <= 0 {
                connection.isClosed = true
            }
        }
        updateInterest(connection)
    }

    /// Reading pauses while a reply is owed (keeps replies in request order); writing is watched
    /// only while the outbox holds something.
    private func updateInterest(_ connection: ControlConnection) {
        guard !connection.isClosed else { return }
        var events: UInt32 = connection.deferred == nil ? clibaio_EPOLLIN | clibaio_EPOLLRDHUP : 0
        if !connection.outbox.isEmpty { events |= clibaio_EPOLLOUT }
        try? loop.modify(connection.fd.rawValue, token: connection.token, events: events)
    }

    func reply(_ connection: ControlConnection, _ bytes: [UInt8]) {
        if connection.outbox.count >= ControlConnection.replyQueueLimit {
            connection.isClosed = true
            return
        }
        send(connection, bytes)
    }

    private func send(_ connection: ControlConnection, _ bytes: [UInt8]) {
        guard !connection.isClosed else { return }
        if connection.outbox.isEmpty {
            let n = bytes.withUnsafeBytes {
                clibaio_send_datagram(connection.fd.rawValue, $0.baseAddress, $0.count, nil, 0, 1)
            }
            if n >= 0 { return }
            if -n != EAGAIN {
                connection.isClosed = true
                return
            }
        }
        connection.outbox.append(bytes)
        updateInterest(connection)
    }

    private func flush(_ connection: ControlConnection) {
        while !connection.outbox.isEmpty {
            let n = connection.outbox[0].withUnsafeBytes {
                clibaio_send_datagram(connection.fd.rawValue, $0.baseAddress, $0.count, nil, 0, 1)
            }
            if n < 0 {
                if -n != EAGAIN { connection.isClosed = true }
                break
            }
            connection.outbox.removeFirst()
        }
        updateInterest(connection)
    }

    private func closeConnection(_ token: UInt64) {
        guard let connection = connections.removeValue(forKey: token) else { return }
        loop.remove(connection.fd.rawValue)
        if owner == token {
            // The frontend died: serve out what it consumed, then back to idle (§2.3).
            owner = nil
            logger.warning(
                "frontend connection closed without detach; draining", metadata: ["image": "\(config.imagePath)"])
            if engine.isAttached && engine.state != .closing { engine.beginDetach() }
        }
    }

    var uptimeSeconds: Double { Double(MonotonicClock.nanoseconds() - startNanos) / 1e9 }
}
