import CLibAIO
import Glibc

/// Reading requests: headers parsed from each connection's receive buffer, write payloads read
/// into their slot's chunks (straight from the socket once the buffer is empty), each request
/// handed to the engine or answered on the spot.
extension NBDTransmission {
    /// Reads and starts requests from every connection that has input, while the engine takes
    /// requests (`Engine.canConsume`: a paused disk holds NBD requests in the sockets).
    func consume(_ engine: Engine) {
        released = false
        for c in 0..<connectionCapacity where connections[c].inUse {
            pump(c, engine)
        }
    }

    private func pump(_ c: Int, _ engine: Engine) {
        let conn = connections + c
        conn.pointee.blocked = false
        // Every way out: a client that closed with nothing in flight goes at once.
        defer { retireIfDone(c) }
        while engine.canConsume && !conn.pointee.closing {
            switch conn.pointee.pending {
            case .payload(let slot):
                guard receivePayload(c, slot) else { return }
                conn.pointee.pending = .none
                start(slot, engine)
            case .discard(let slot):
                guard discardPayload(c, slot) else { return }
                conn.pointee.pending = .none
                enqueue(slot)
            case .none:
                guard fill(c, atLeast: NBDRequestHeader.byteCount) else { return }
                let bytes = UnsafeRawBufferPointer(
                    start: receiveBuffer(c) + conn.pointee.recvStart, count: NBDRequestHeader.byteCount)
                let header = NBDRequestHeader(bytes: bytes)
                guard handle(header, c, engine) else {
                    conn.pointee.blocked = true
                    return
                }
            }
        }
    }

    /// One header: false when it must wait for a slot or chunks (it stays in the buffer).
    private func handle(_ header: NBDRequestHeader, _ c: Int, _ engine: Engine) -> Bool {
        let conn = connections + c
        let decision = conn.pointee.parser.decide(header)
        switch decision {
        case .violation:
            disconnect(c)
            return true
        case .disconnect:
            conn.pointee.recvStart += NBDRequestHeader.byteCount
            conn.pointee.closing = true
            return true
        case .refuse(let cookie, let error):
            guard let slot = takeSlot(for: c, chunks: 0) else { return false }
            conn.pointee.recvStart += NBDRequestHeader.byteCount
            conn.pointee.requests += 1
            slots[Int(slot)].cookie = cookie
            reply(slot, error: error)
            if header.payloadLength > 0 {
                slots[Int(slot)].length = header.payloadLength
                slots[Int(slot)].phase = .discarding
                conn.pointee.pending = .discard(slot)
            } else {
                enqueue(slot)
            }
            return true
        case .execute(let request):
            let chunks: Int =
                switch request.command {
                case .read, .write: request.length == 0 ? 0 : NBDBufferPool.chunks(for: Int(request.length))
                case .blockStatus: 1
                default: 0
                }
            guard let slot = takeSlot(for: c, chunks: chunks) else { return false }
            conn.pointee.recvStart += NBDRequestHeader.byteCount
            conn.pointee.requests += 1
            let s = slots + Int(slot)
            s.pointee.cookie = request.cookie
            s.pointee.command = request.command
            s.pointee.flags = request.flags
            s.pointee.offset = request.offset
            s.pointee.length = request.length
            if request.command == .write && request.length > 0 {
                s.pointee.phase = .receiving
                conn.pointee.pending = .payload(slot)
            } else {
                start(slot, engine)
            }
            return true
        }
    }

    /// Makes at least `count` unparsed bytes available in the receive buffer; false when the
    /// socket has no more now (or the client is gone).
    private func fill(_ c: Int, atLeast count: Int) -> Bool {
        let conn = connections + c
        if conn.pointee.recvEnd - conn.pointee.recvStart >= count { return true }
        let buffer = receiveBuffer(c)
        if conn.pointee.recvStart > 0 {
            let n = conn.pointee.recvEnd - conn.pointee.recvStart
            if n > 0 { memmove(buffer, buffer + conn.pointee.recvStart, n) }
            conn.pointee.recvStart = 0
            conn.pointee.recvEnd = n
        }
        while conn.pointee.recvEnd < count {
            guard conn.pointee.readable else { return false }
            let n = read(conn.pointee.fd, buffer + conn.pointee.recvEnd, Self.receiveBufferSize - conn.pointee.recvEnd)
            if n > 0 {
                conn.pointee.recvEnd += n
            } else if n == 0 {
                conn.pointee.readable = false
                conn.pointee.closing = true
                return false
            } else if errno == EINTR {
                continue
            } else {
                conn.pointee.readable = false
                if errno != EAGAIN { disconnect(c) }
                return false
            }
        }
        return true
    }

    /// Moves a write's payload into its chunks: first what is buffered, then straight from the
    /// socket. True when all of it has arrived.
    private func receivePayload(_ c: Int, _ slot: Int32) -> Bool {
        let conn = connections + c
        let s = slots + Int(slot)
        let total = Int(s.pointee.length)
        let list = chunkList(slot)
        while s.pointee.received < total {
            let at = s.pointee.received
            let chunk = at / NBDBufferPool.chunkSize
            let within = at % NBDBufferPool.chunkSize
            let room = min(NBDBufferPool.chunkSize - within, total - at)
            let target = pool.address(of: list[chunk]) + within
            let buffered = conn.pointee.recvEnd - conn.pointee.recvStart
            if buffered > 0 {
                let n = min(buffered, room)
                target.copyMemory(from: receiveBuffer(c) + conn.pointee.recvStart, byteCount: n)
                conn.pointee.recvStart += n
                s.pointee.received += n
                continue
            }
            conn.pointee.recvStart = 0
            conn.pointee.recvEnd = 0
            guard conn.pointee.readable else { return false }
            let n = read(conn.pointee.fd, target, room)
            if n > 0 {
                s.pointee.received += n
            } else if n == 0 {
                conn.pointee.readable = false
                disconnect(c)
                return false
            } else if errno != EINTR {
                conn.pointee.readable = false
                if errno != EAGAIN { disconnect(c) }
                return false
            }
        }
        return true
    }

    /// Reads and drops a refused write's payload (through the receive buffer).
    private func discardPayload(_ c: Int, _ slot: Int32) -> Bool {
        let conn = connections + c
        let s = slots + Int(slot)
        while s.pointee.received < Int(s.pointee.length) {
            let buffered = conn.pointee.recvEnd - conn.pointee.recvStart
            if buffered == 0 {
                conn.pointee.recvStart = 0
                conn.pointee.recvEnd = 0
                guard fill(c, atLeast: 1) else { return false }
                continue
            }
            let n = min(buffered, Int(s.pointee.length) - s.pointee.received)
            conn.pointee.recvStart += n
            s.pointee.received += n
        }
        return true
    }

    /// A request that is complete on our side: to the engine, or answered here (a zero-length
    /// request, CACHE, BLOCK_STATUS, a FAST_ZERO that would not be fast).
    func start(_ slot: Int32, _ engine: Engine) {
        let s = slots + Int(slot)
        let operation: DiskOperation
        switch s.pointee.command {
        case .read, .write:
            if s.pointee.length == 0 {
                succeed(slot)
                return
            }
            operation = s.pointee.command == .read ? .read : .write
        case .flush:
            operation = .flush
        case .trim:
            if s.pointee.length == 0 {
                succeed(slot)
                return
            }
            operation = .discard
        case .writeZeroes:
            if s.pointee.length == 0 {
                succeed(slot)
                return
            }
            // A hole reads as zeroes only in a file; NO_HOLE asks for the blocks to stay allocated.
            operation = s.pointee.flags.contains(.noHole) || !isRegularFile ? .writeZeroes : .discard
        case .cache:
            // The image is read with O_DIRECT (or through the page cache the kernel manages): there
            // is nothing to warm that a later read would find.
            succeed(slot)
            return
        case .blockStatus:
            blockStatus(slot)
            return
        case .disconnect:
            preconditionFailure("DISC never takes a slot")
        }
        engine.startNBD(
            slot: slot, operation: operation, offset: s.pointee.offset, length: s.pointee.length,
            cookie: s.pointee.cookie, chunks: chunkList(slot), chunkCount: Int(s.pointee.chunkCount), pool: pool.base)
        s.pointee.phase = .executing
    }

    /// `base:allocation` extents into the slot's chunk, answered at once.
    private func blockStatus(_ slot: Int32) {
        let s = slots + Int(slot)
        let c = Int(s.pointee.connection)
        let data = pool.address(of: chunkList(slot)[0])
        var count = 0
        let capacity = min(NBDExtentScanner.maximumExtents, NBDBufferPool.chunkSize / NBDReplyEncoder.extentLength)
        NBDExtentScanner.scan(
            fd: imageFD, offset: s.pointee.offset, length: s.pointee.length,
            minimumBlockSize: export.minimumBlockSize, capacity: capacity,
            requestOne: s.pointee.flags.contains(.requestOne)
        ) { extent in
            count += 1
            _ = NBDReplyEncoder.extent(
                length: extent.length, flags: extent.flags, at: data + (count - 1) * NBDReplyEncoder.extentLength)
        }
        let n = NBDReplyEncoder.blockStatusHeader(
            cookie: s.pointee.cookie, contextID: connections[c].contextID, extents: count, at: header(slot))
        s.pointee.headerLength = Int32(n)
        s.pointee.dataLength = count * NBDReplyEncoder.extentLength
        enqueue(slot)
    }
}
