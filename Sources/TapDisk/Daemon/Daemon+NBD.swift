import CLibAIO
import Glibc

/// The NBD socket (`--nbd unix:PATH|tcp:HOST:PORT`, or the activated fd named `nbd`): clients
/// accepted on the disk's one thread, their handshake driven by `NBDHandshake` under a
/// deadline, then handed to the engine's NBD front (`NBDTransmission`).
///
/// Coexistence (docs/nbd.md): NBD clients and a ring or vhost-user frontend exclude each other,
/// so two writers that know nothing of each other's caches never share the disk. While a ring or
/// virtqueue is attached, `NBD_OPT_GO`/`NBD_OPT_INFO` are answered `NBD_REP_ERR_POLICY` (and
/// `NBD_OPT_EXPORT_NAME`, which has no error reply, is a disconnect); while NBD clients are
/// connected, `attach` is refused `busy` and vhost-user connections are closed, as for any
/// attached frontend. Several NBD clients at once are fine: one engine serves them all, and a
/// flush covers every connection's completed writes (`NBD_FLAG_CAN_MULTI_CONN`).
extension Daemon {
    /// Every NBD socket (listener excluded) is in the epoll set under this bit plus its fd.
    static let nbdSocketTokenBit: UInt64 = 1 << 48

    /// What the handshake may offer now.
    var nbdAvailability: NBDHandshake.Availability {
        if terminating { return .shuttingDown }
        guard engine.isAttached else { return .available }
        if engine.nbdTransmission == nil {
            return .refused("the disk is attached to a \(engine.front.name) frontend; NBD waits until it detaches")
        }
        // The last client just left and its requests are still finishing (it went away with
        // I/O in flight). Once drained, a new client re-attaches at once (`enterTransmission`).
        if engine.state == .closing && !engine.isDrained {
            return .refused("the last client's requests are still draining; connect again")
        }
        return .available
    }

    func acceptNBD() {
        guard let nbd else { return }
        while true {
            let fd = clibaio_accept(nbdListenerFD)
            guard fd >= 0 else { return }
            let total = nbdHandshakes.count + nbd.connectionCount
            guard total < config.nbdMaxConnections, !terminating else {
                logger.warning(
                    "NBD connection refused: \(terminating ? "shutting down" : "at --nbd-max-connections \(config.nbdMaxConnections)")",
                    metadata: ["image": "\(config.imagePath)"])
                close(fd)
                continue
            }
            clibaio_nbd_tune_connection(fd)
            let now = MonotonicClock.nanoseconds()
            let client = NBDHandshakeClient(
                fd: fd, export: nbd.export, deadline: now &+ config.nbdHandshakeTimeoutSeconds * 1_000_000_000)
            let events = clibaio_EPOLLIN | clibaio_EPOLLOUT | clibaio_EPOLLRDHUP | clibaio_EPOLLET
            guard (try? loop.add(fd, token: Self.nbdSocketTokenBit | UInt64(fd), events: events)) != nil else {
                close(fd)
                continue
            }
            nbdHandshakes[fd] = client
            _ = client.flush()
            advanceHandshake(client)
        }
    }

    /// A ready NBD socket: a handshake to advance, or a client in transmission to read or write.
    func dispatchNBD(_ ready: Poller.Ready) {
        let fd = Int32(truncatingIfNeeded: ready.token & 0xffff_ffff)
        if let client = nbdHandshakes[fd] {
            guard client.flush() else { return endHandshake(client, reason: "peer gone") }
            advanceHandshake(client)
        } else if let index = nbdConnectionOfFD[fd], let nbd {
            if ready.events & clibaio_EPOLLOUT != 0 { nbd.writable(index) }
            if ready.isReadable || ready.isHangup { nbd.readable(index) }
            engine.service()
        }
    }

    /// Feeds whatever arrived to the state machine, until it waits, ends, or enters transmission.
    private func advanceHandshake(_ client: NBDHandshakeClient) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(client.fd, $0.baseAddress!, $0.count) }
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) {
                return endHandshake(client, reason: "peer closed the connection during the handshake")
            }
            if n < 0 { return }
            var offset = 0
            while offset < n {
                let (consumed, outcome) = buffer.withUnsafeBytes {
                    client.handshake.feed(
                        UnsafeRawBufferPointer(rebasing: $0[offset..<n]), availability: nbdAvailability,
                        output: &client.output)
                }
                offset += consumed
                guard client.flush() else { return endHandshake(client, reason: "peer gone") }
                switch outcome {
                case .pending:
                    continue
                case .closed(let end):
                    return endHandshake(client, reason: "\(end)")
                case .transmission(let session):
                    return enterTransmission(client, session, leftover: buffer[offset..<n])
                }
            }
        }
    }

    private func enterTransmission(_ client: NBDHandshakeClient, _ session: NBDSession, leftover: ArraySlice<UInt8>) {
        guard let nbd, !client.hasUnsentOutput else {
            return endHandshake(client, reason: "the handshake's replies were not read")
        }
        if engine.nbdTransmission != nil && engine.state == .closing && engine.isDrained {
            // The NBD front was detaching because the last client left: finish that now.
            completeDetach()
        }
        if !engine.isAttached {
            do throws(Engine.AttachError) {
                try engine.attachNBD(nbd)
            } catch {
                return endHandshake(client, reason: "the disk is busy")
            }
        }
        let now = MonotonicClock.nanoseconds()
        guard let index = nbd.adopt(fd: client.fd, session: session, leftover: leftover, peer: client.peer, now: now)
        else {
            return endHandshake(client, reason: "no connection entry free")
        }
        nbdHandshakes[client.fd] = nil
        nbdConnectionOfFD[client.fd] = index
        logger.info(
            "NBD client connected",
            metadata: [
                "image": "\(config.imagePath)", "peer": "\(client.peer)",
                "structured-replies": "\(session.structuredReplies)", "export": "\(session.exportName)",
            ])
        broadcast(
            event: "nbd-connected",
            [
                "peer": .string(client.peer), "export": .string(session.exportName),
                "structured-replies": .bool(session.structuredReplies),
                "block-status": .bool(session.allocationContext != nil),
                "clients": .integer(nbd.connectionCount),
            ])
        engine.service()
    }

    private func endHandshake(_ client: NBDHandshakeClient, reason: String) {
        loop.remove(client.fd)
        close(client.fd)
        nbdHandshakes[client.fd] = nil
        logger.info("NBD handshake ended", metadata: ["peer": "\(client.peer)", "reason": "\(reason)"])
    }

    /// Every 500 ms: handshakes past their deadline and clients that stopped reading replies go.
    func nbdPeriodic(now: UInt64) {
        for client in nbdHandshakes.values where now > client.deadline {
            endHandshake(client, reason: "handshake deadline (\(config.nbdHandshakeTimeoutSeconds) s) passed")
        }
        if let nbd, nbd.disconnectStalled(now: now) > 0 {
            logger.warning(
                "NBD client disconnected: its replies went unread", metadata: ["image": "\(config.imagePath)"])
        }
    }

    /// The earliest NBD deadline (a handshake's, or a stalled reader's), for the one-shot timer.
    func nbdDeadlineNanos() -> UInt64? {
        var next = nbd?.nextStallDeadlineNanos ?? UInt64.max
        for client in nbdHandshakes.values { next = min(next, client.deadline &+ 1) }
        return next == .max ? nil : next
    }

    /// After each wakeup: closes the sockets of clients that are gone (their requests have all
    /// been answered or dropped), and detaches the NBD front when the last one left.
    func settleNBD() {
        guard let nbd else { return }
        if engine.nbdTransmission == nil && nbd.connectionCount > 0 {
            // A `detach` (or a shutdown) finished the NBD front: its clients go, each once its
            // last reply is written.
            for i in 0..<nbd.connectionCapacity { nbd.close(i) }
        }
        if terminating {
            for (fd, client) in nbdHandshakes {
                _ = fd
                endHandshake(client, reason: "shutting down")
            }
        }
        if !nbd.closedSinceLastLook.isEmpty {
            let closed = nbd.closedSinceLastLook
            nbd.closedSinceLastLook.removeAll()
            for entry in closed {
                let fd = nbd.fd(of: entry.index)
                loop.remove(fd)
                close(fd)
                nbdConnectionOfFD[fd] = nil
                logger.info(
                    "NBD client disconnected",
                    metadata: [
                        "image": "\(config.imagePath)", "peer": "\(entry.peer)", "requests": "\(entry.requests)",
                    ])
                broadcast(
                    event: "nbd-disconnected",
                    [
                        "peer": .string(entry.peer), "requests": .uint(entry.requests),
                        "clients": .integer(nbd.connectionCount),
                    ])
            }
        }
        if engine.nbdTransmission != nil && nbd.connectionCount == 0 && engine.state != .closing {
            engine.beginDetach()
        }
    }

    /// SIGTERM with NBD clients: in-flight requests are answered (the engine drains), then every
    /// client is disconnected, as the spec asks of a server that shuts down.
    func terminateNBD() {
        guard let nbd else { return }
        for i in 0..<nbd.connectionCapacity { nbd.close(i) }
    }

    /// `info`'s `nbd` member: where and what is served, or null.
    func nbdInfo() -> JSONValue {
        guard let nbd else { return .null }
        return .object([
            "listen": .string(config.nbdAddress?.description ?? "activated"),
            "export": .string(nbd.export.name),
            "size": .uint(nbd.export.size),
            "minimum-block-size": .uint(UInt64(nbd.export.minimumBlockSize)),
            "preferred-block-size": .uint(UInt64(NBDExport.preferredBlockSize)),
            "maximum-payload": .uint(UInt64(NBDExport.maximumPayload)),
            "max-connections": .integer(config.nbdMaxConnections),
        ])
    }

    /// `status`' `nbd` member: the listener and one entry per client.
    func nbdStatus() -> JSONValue {
        guard let nbd else { return .null }
        let now = MonotonicClock.nanoseconds()
        let clients: [JSONValue] = nbd.clients(now: now).map { c in
            .object([
                "peer": .string(c.peer), "requests": .uint(c.requests), "in-flight": .integer(c.inFlight),
                "structured-replies": .bool(c.structured), "connected-seconds": .uint(c.seconds),
            ])
        }
        return .object([
            "listen": .string(config.nbdAddress?.description ?? "activated"),
            "export": .string(nbd.export.name),
            "max-connections": .integer(config.nbdMaxConnections),
            "handshaking": .integer(nbdHandshakes.count),
            "clients": .array(clients),
        ])
    }
}

extension Daemon {
    /// The NBD listener (from `--nbd`, or the activated fd named `nbd`) and the transmission
    /// phase's storage, or neither when NBD is not served.
    /// The listener is returned as a raw fd: it lives as long as the process.
    static func openNBD(config: DaemonConfiguration, engine: Engine, activated: Int32?) throws(StartError) -> (
        listener: Int32, transmission: NBDTransmission?
    ) {
        guard let address = activated.map({ NBDListenAddress.activated(fd: $0) }) ?? config.nbdAddress else {
            return (-1, nil)
        }
        let g = engine.geometry
        let name = config.nbdExportName ?? String(config.imagePath.split(separator: "/").last ?? "")
        let export = NBDExport(
            name: name, size: g.sectors * 512, minimumBlockSize: g.sectorSize, readOnly: config.readOnly,
            canTrim: g.discard)
        let transmission: NBDTransmission
        do {
            transmission = try NBDTransmission(
                export: export, imageFD: engine.image.fd.rawValue, isRegularFile: !g.isBlockDevice,
                slots: NBDTransmission.defaultSlots, connections: config.nbdMaxConnections,
                poolChunks: NBDTransmission.defaultPoolChunks)
        } catch {
            throw StartError(description: "cannot allocate the NBD buffers: \(error)")
        }
        do throws(NBDListenAddress.ParseError) {
            let listener = try address.listen()
            return (listener.release(), transmission)
        } catch {
            throw StartError(description: error.description)
        }
    }
}
