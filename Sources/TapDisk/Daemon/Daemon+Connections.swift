import CLibAIO
import Glibc

/// Control connections: accepting (within the admission limits), reading requests, queueing
/// replies and events, closing. The datagram I/O itself is `ControlConnection`'s.
extension Daemon {

    func acceptConnections() {
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
    func outOfFileDescriptors(_ errno: Errno) {
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
    func readRequests(_ connection: ControlConnection) {
        var budget = 64
        while budget > 0, connection.deferred == nil, !connection.isClosed {
            budget -= 1
            guard case .datagram(let count, let fds, let controlTruncated) = connection.receive(into: receiveBuffer)
            else { break }
            defer { for fd in fds { close(fd) } }
            // ControlRequest.parse refuses empty and oversized datagrams (the buffer holds one
            // byte more than the limit, so a longer datagram arrives as limit + 1 bytes).
            switch ControlRequest.parse(UnsafeRawBufferPointer(rebasing: receiveBuffer[0..<count])) {
            case .failure(let failure):
                reply(connection, ControlReply.error(failure))
            case .success(let request):
                handle(request, from: connection, fds: fds, controlTruncated: controlTruncated)
            }
        }
        if !connection.isClosed, connection.deferred == nil, connection.peerHasLeft { connection.isClosed = true }
        updateInterest(connection)
    }

    /// Reading pauses while a reply is owed (keeps replies in request order); writing is watched
    /// only while the outbox holds something.
    func updateInterest(_ connection: ControlConnection) {
        guard !connection.isClosed else { return }
        try? loop.modify(connection.fd.rawValue, token: connection.token, events: connection.wantedEvents)
    }

    func reply(_ connection: ControlConnection, _ bytes: [UInt8]) {
        if connection.outbox.count >= ControlConnection.replyQueueLimit {
            connection.isClosed = true
            return
        }
        send(connection, bytes)
    }

    func send(_ connection: ControlConnection, _ bytes: [UInt8]) {
        if connection.send(bytes) { updateInterest(connection) }
    }

    func flush(_ connection: ControlConnection) {
        connection.flush()
        updateInterest(connection)
    }

    func closeConnection(_ token: UInt64) {
        guard let connection = connections.removeValue(forKey: token) else { return }
        loop.remove(connection.fd.rawValue)
        if owner == token {
            // The frontend died: serve out what it consumed, then back to idle (§6.4).
            owner = nil
            logger.warning(
                "frontend connection closed without detach; draining", metadata: ["image": "\(config.imagePath)"])
            if engine.isAttached && engine.state != .closing { engine.beginDetach() }
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
}
