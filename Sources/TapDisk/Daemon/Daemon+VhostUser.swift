import CLibAIO
import Glibc

/// The vhost-user-blk socket (`--vhost-user-blk`): one front-end (QEMU) at a time, its messages
/// applied between requests on the disk's one thread, and a disconnect drained like a blkif
/// frontend's crash (§6.4) before the next front-end is accepted.
///
/// A message that stops or remaps the ring while chains are in flight (GET_VRING_BASE,
/// SET_MEM_TABLE, RESET_*) is parked: the socket is no longer read, the engine stops taking
/// chains, and the message is applied once everything it would pull out from under the kernel
/// has been answered.
extension Daemon {
    /// How long one message may take to arrive once it has begun (and how long a reply may stay
    /// unread) before the connection is dropped: `VhostUserMessage.receive` reads a whole
    /// message on the disk's one thread.
    static let vhostStallMilliseconds: Int32 = 1000

    /// Every check on the `--vhost-user-blk` path that creates nothing (run before the image is
    /// opened, as `SocketFile.check` is for the control socket): length, an existing file that
    /// is not a socket, a live listener. Returns whether a stale socket file is there.
    static func checkVhostUserPath(_ path: String) throws(StartError) -> Bool {
        guard path.utf8.count < 108 else {
            throw StartError(description: "--vhost-user-blk \(path): longer than AF_UNIX allows (107 bytes)")
        }
        var st = stat()
        guard lstat(path, &st) == 0 else { return false }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            throw StartError(description: "--vhost-user-blk \(path) exists and is not a socket; not replacing it")
        }
        let probe = clibaio_stream_connect(path)
        if probe >= 0 {
            close(probe)
            throw StartError(description: "--vhost-user-blk \(path): something is already listening there")
        }
        return true
    }

    /// Binds the vhost-user socket, replacing a stale socket file but never a live listener's.
    static func listenVhostUser(at path: String) throws(StartError) -> FileDescriptor {
        if try checkVhostUserPath(path) { unlink(path) }
        let fd = clibaio_stream_listen(path, 1)
        guard fd >= 0 else {
            throw StartError(description: "cannot listen on --vhost-user-blk \(path): \(Errno(rawValue: -fd))")
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return FileDescriptor(adopting: fd)
    }

    /// What the guest sees: the image's geometry, and DISCARD/WRITE_ZEROES where the image can
    /// punch holes.
    var vhostConfiguration: VhostUserDeviceConfiguration {
        let g = engine.geometry
        var c = VhostUserDeviceConfiguration(
            capacitySectors: g.sectors, blockSize: g.sectorSize, readOnly: config.readOnly)
        c.discard = g.discard
        c.maxQueueSize = engine.maxVirtqueueSize
        return c
    }

    func acceptVhostUser() {
        guard vhostListenerFD >= 0 else { return }
        let fd = clibaio_accept(vhostListenerFD)
        guard fd >= 0 else { return }
        let connection = FileDescriptor(adopting: fd)
        guard vhostConnection == nil, !engine.isAttached, !terminating else {
            // Not reached while serving (the listener is unwatched then); a blkif attach in
            // between, or a shutdown, refuses by closing.
            logger.warning(
                "vhost-user connection refused: the disk is busy", metadata: ["image": "\(config.imagePath)"])
            return
        }
        logger.info("vhost-user front-end connected", metadata: ["image": "\(config.imagePath)"])
        do {
            _ = try Errno.check(clibaio_stream_set_blocking_timeouts(fd, Self.vhostStallMilliseconds))
            try engine.attachVirtio(vhostConfiguration)
            try loop.add(fd, token: Token.vhostConnection)
        } catch {
            logger.error("vhost-user connection failed: \(error)", metadata: ["image": "\(config.imagePath)"])
            if engine.isAttached { engine.beginDetach() }
            return
        }
        loop.remove(vhostListenerFD)
        vhostConnection = consume connection
    }

    /// One message per readiness (level-triggered epoll comes back for the next).
    func readVhostUser() {
        guard let fd = vhostConnection?.rawValue else { return }
        let message: VhostUserMessage
        do {
            guard let m = try VhostUserMessage.receive(from: fd, deadlineMilliseconds: Self.vhostStallMilliseconds)
            else {
                disconnectVhostUser(reason: "front-end closed the connection")
                return
            }
            message = m
        } catch {
            disconnectVhostUser(reason: "bad message: \(error)")
            return
        }
        if engine.virtio.device.mustWaitForDrain(message) {
            loop.remove(fd)
            parkedVhostMessage = consume message
            engine.stopFront()
            return
        }
        applyVhostUser(message)
    }

    /// Applies a message and sends its reply; a refusal the protocol cannot express ends the
    /// connection.
    private func applyVhostUser(_ message: consuming VhostUserMessage) {
        guard let fd = vhostConnection?.rawValue else { return }
        let request = message.request
        loop.releaseKickWatch()
        let starts = engine.virtio.device.queueStarts
        do {
            if let reply = try engine.handleVhostMessage(message) {
                try VhostUserReply.send(reply, on: fd, descriptor: engine.virtio.device.takeReplyDescriptor())
            }
            if engine.virtio.device.queueStarts != starts, engine.virtio.device.recoveredFromInflight > 0 {
                logger.info(
                    "vhost-user ring resumed with requests from the inflight region",
                    metadata: [
                        "resubmitted": "\(engine.virtio.device.recoveredFromInflight)", "image": "\(config.imagePath)",
                    ])
            }
        } catch {
            disconnectVhostUser(reason: "\(request): \(error)")
        }
    }

    /// After each wakeup: a parked message whose drain is done.
    func settleVhostUser() {
        guard parkedVhostMessage != nil, engine.isDrained, let fd = vhostConnection?.rawValue else { return }
        let message = parkedVhostMessage.take()!
        applyVhostUser(message)
        guard vhostConnection != nil else { return }
        engine.restartFront()
        try? loop.add(fd, token: Token.vhostConnection)
    }

    /// Ends the connection now; the engine drains what the guest had posted (answers go to
    /// guest memory, still mapped) and `completeDetach` brings the disk back to idle.
    func disconnectVhostUser(reason: String) {
        guard let connection = vhostConnection.take() else { return }
        loop.remove(connection.rawValue)
        _ = parkedVhostMessage.take()
        logger.notice("vhost-user front-end gone: \(reason); draining", metadata: ["image": "\(config.imagePath)"])
        if engine.isAttached && engine.state != .closing { engine.beginDetach() }
    }

    /// The virtqueue's drain finished (`completeDetach`): take the next front-end.
    func vhostUserDetached() {
        if let connection = vhostConnection.take() { loop.remove(connection.rawValue) }
        _ = parkedVhostMessage.take()
        if vhostListenerFD >= 0, !terminating { try? loop.add(vhostListenerFD, token: Token.vhostListener) }
    }
}
