import CLibAIO
import Glibc

/// Answering: every slot gets exactly one reply (one simple reply, or structured chunks whose
/// last carries `DONE`), queued on its connection and written with gathered `writev`s as the
/// socket takes them (an edge-triggered EPOLLOUT resumes a write that hit EAGAIN).
extension NBDTransmission {
    /// The engine answered the request in `slot`: ENOSPC/EDQUOT reach the client as
    /// `NBD_ENOSPC`, and so on (`NBDError(errno:)`). A reply for a client that is gone is dropped.
    func answer(_ slot: Int32, _ completion: Completion, engine: Engine) {
        let s = slots + Int(slot)
        let conn = connections + Int(s.pointee.connection)
        guard conn.pointee.inUse, conn.pointee.generation == s.pointee.generation, !conn.pointee.dead else {
            releaseSlot(slot)
            return
        }
        guard completion.status == .ok else {
            let error: NBDError =
                if completion.status == .notSupported {
                    // Only a fast zero may be refused ENOTSUP; anything else did not happen: EIO.
                    s.pointee.flags.contains(.fastZero) ? .notSupported : .io
                } else {
                    completion.errno == 0 ? .io : NBDError(errno: completion.errno)
                }
            reply(slot, error: error)
            enqueue(slot)
            return
        }
        // FUA: the data is written; the reply waits for the sync that makes it durable.
        if s.pointee.flags.contains(.fua) && !s.pointee.flushIssued && s.pointee.command != .flush
            && s.pointee.command != .read
        {
            s.pointee.flushIssued = true
            engine.startNBD(
                slot: slot, operation: .flush, offset: 0, length: 0, cookie: s.pointee.cookie,
                chunks: chunkList(slot), chunkCount: 0, pool: pool.base)
            return
        }
        if s.pointee.command == .read {
            let structured = conn.pointee.structured
            let n =
                structured
                ? NBDReplyEncoder.offsetDataHeader(
                    cookie: s.pointee.cookie, offset: s.pointee.offset, dataLength: s.pointee.length, done: true,
                    at: header(slot))
                : NBDReplyEncoder.simpleReply(cookie: s.pointee.cookie, error: nil, at: header(slot))
            s.pointee.headerLength = Int32(n)
            s.pointee.dataLength = Int(s.pointee.length)
            enqueue(slot)
        } else {
            succeed(slot)
        }
    }

    /// Success without data: a simple reply, or (a zero-length read to a structured client) a
    /// `NONE|DONE` chunk, since a read must not get a simple reply then.
    func succeed(_ slot: Int32) {
        let s = slots + Int(slot)
        let structuredRead = s.pointee.command == .read && connections[Int(s.pointee.connection)].structured
        let n =
            structuredRead
            ? NBDReplyEncoder.done(cookie: s.pointee.cookie, at: header(slot))
            : NBDReplyEncoder.success(cookie: s.pointee.cookie, at: header(slot))
        s.pointee.headerLength = Int32(n)
        s.pointee.dataLength = 0
        enqueue(slot)
    }

    /// Writes an error reply into the slot's header (not queued yet).
    func reply(_ slot: Int32, error: NBDError) {
        let s = slots + Int(slot)
        let n = NBDReplyEncoder.failure(
            cookie: s.pointee.cookie, error: error, structured: connections[Int(s.pointee.connection)].structured,
            at: header(slot))
        s.pointee.headerLength = Int32(n)
        s.pointee.dataLength = 0
    }

    /// Appends the slot's reply to its connection's output queue; `flushAll` (the engine's push,
    /// once per round) writes it, so replies completed together leave in one `writev`.
    func enqueue(_ slot: Int32) {
        let s = slots + Int(slot)
        let c = Int(s.pointee.connection)
        let conn = connections + c
        s.pointee.phase = .queued
        s.pointee.sent = 0
        s.pointee.next = -1
        if conn.pointee.queueTail >= 0 {
            slots[Int(conn.pointee.queueTail)].next = slot
        } else {
            conn.pointee.queueHead = slot
            conn.pointee.lastOutputProgress = MonotonicClock.nanoseconds()
        }
        conn.pointee.queueTail = slot
        conn.pointee.hasOutput = true
    }

    /// Writes every connection's queued replies (the engine's push, after each round).
    func flushAll() {
        for c in 0..<connectionCapacity where connections[c].hasOutput {
            connections[c].hasOutput = false
            flush(c)
        }
    }

    /// EPOLLOUT: the socket takes bytes again.
    package func writable(_ c: Int) {
        guard connections[c].inUse else { return }
        flush(c)
    }

    /// EPOLLIN (or a hangup): read on the next `consume`.
    package func readable(_ c: Int) {
        guard connections[c].inUse, !connections[c].dead else { return }
        connections[c].readable = true
    }

    /// Writes queued replies, as many per `writev` as `gather` iovecs hold, until the queue is
    /// empty or the socket is full.
    func flush(_ c: Int) {
        let conn = connections + c
        while conn.pointee.queueHead >= 0 && !conn.pointee.dead {
            var count = 0
            var slot = conn.pointee.queueHead
            while slot >= 0 && count < Self.gather - 1 {
                let s = slots + Int(slot)
                var skip = s.pointee.sent
                let headerLength = Int(s.pointee.headerLength)
                if skip < headerLength {
                    writeVector[count] = iovec(iov_base: header(slot) + skip, iov_len: headerLength - skip)
                    count += 1
                    skip = 0
                } else {
                    skip -= headerLength
                }
                var remaining = s.pointee.dataLength
                var chunk = 0
                let list = chunkList(slot)
                while remaining > 0 && count < Self.gather {
                    let piece = min(NBDBufferPool.chunkSize, remaining)
                    if skip >= piece {
                        skip -= piece
                    } else {
                        writeVector[count] = iovec(
                            iov_base: pool.address(of: list[chunk]) + skip, iov_len: piece - skip)
                        count += 1
                        skip = 0
                    }
                    remaining -= piece
                    chunk += 1
                }
                if remaining > 0 { break }
                slot = s.pointee.next
            }
            let n = writev(conn.pointee.fd, writeVector, Int32(count))
            if n < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN { disconnect(c) }
                return
            }
            conn.pointee.lastOutputProgress = MonotonicClock.nanoseconds()
            var written = n
            while written > 0, conn.pointee.queueHead >= 0 {
                let head = conn.pointee.queueHead
                let s = slots + Int(head)
                let left = Int(s.pointee.headerLength) + s.pointee.dataLength - s.pointee.sent
                if written < left {
                    s.pointee.sent += written
                    break
                }
                written -= left
                conn.pointee.queueHead = s.pointee.next
                if conn.pointee.queueHead < 0 { conn.pointee.queueTail = -1 }
                releaseSlot(head)
            }
        }
    }
}
