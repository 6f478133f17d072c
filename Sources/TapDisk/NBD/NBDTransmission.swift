import CLibAIO
import Glibc

/// The NBD front's transmission phase: every connected client's socket, requests and replies,
/// served by the disk's one engine on its one thread.
///
/// All storage is allocated here once: connection entries with a 64 KiB receive buffer each,
/// request slots (as many as the engine's request table has records), reply headers, chunk
/// lists and the data buffer pool. A request takes a slot and its chunks when its header is
/// parsed and gives them back when the last byte of its reply is written, so steady-state
/// serving allocates nothing.
///
/// Fairness and hostile clients: a connection holds at most half the slots and half the chunks,
/// so one client that stops reading its replies cannot starve the others, and it is dropped
/// when its output has not moved for `stallNanos`. A bad magic or an oversized write is a hard
/// disconnect (`NBDViolation`); everything else is answered.
package final class NBDTransmission {
    package static let receiveBufferSize = 64 << 10
    /// A client whose queued replies have not moved for this long is disconnected.
    package static let stallNanos: UInt64 = 30_000_000_000
    static let headerRoom = 32
    /// Requests in flight across all connections (the engine's request table for NBD).
    package static let defaultSlots = 256
    /// 64 MiB of buffers in 128 KiB chunks: two maximum requests, or 512 small ones.
    package static let defaultPoolChunks = 512
    /// iovecs per `writev` of queued replies.
    static let gather = 64

    package let export: NBDExport
    let imageFD: Int32
    let isRegularFile: Bool
    package let slotCapacity: Int
    package let connectionCapacity: Int
    var connections: UnsafeMutablePointer<NBDConnection>
    var receiveBuffers: UnsafeMutableRawPointer
    var slots: UnsafeMutablePointer<NBDSlot>
    var headers: UnsafeMutableRawPointer
    var chunkLists: UnsafeMutablePointer<UInt16>
    var freeSlots: UnsafeMutablePointer<Int32>
    var freeSlotCount: Int
    var pool: NBDBufferPool
    let writeVector: UnsafeMutablePointer<iovec>
    /// Peer descriptions for `ctl status` (control path only).
    var peers: [String]
    /// Some slot or chunk came free since the last look: blocked connections may go on.
    var released = false
    /// Connections whose entry was freed since the daemon last asked (their disconnect events).
    package var closedSinceLastLook: [(index: Int, peer: String, requests: UInt64)] = []

    package init(
        export: NBDExport, imageFD: Int32, isRegularFile: Bool, slots: Int, connections: Int, poolChunks: Int
    ) throws(Errno) {
        self.export = export
        self.imageFD = imageFD
        self.isRegularFile = isRegularFile
        slotCapacity = slots
        connectionCapacity = connections
        pool = try NBDBufferPool(chunkCount: poolChunks)
        self.connections = .allocate(capacity: connections)
        self.connections.initialize(repeating: NBDConnection(), count: connections)
        receiveBuffers = .allocate(byteCount: connections * Self.receiveBufferSize, alignment: 4096)
        self.slots = .allocate(capacity: slots)
        self.slots.initialize(repeating: NBDSlot(), count: slots)
        headers = .allocate(byteCount: slots * Self.headerRoom, alignment: 16)
        chunkLists = .allocate(capacity: slots * NBDBufferPool.chunksPerMaximumRequest)
        freeSlots = .allocate(capacity: slots)
        for i in 0..<slots { freeSlots[i] = Int32(slots - 1 - i) }
        freeSlotCount = slots
        writeVector = .allocate(capacity: Self.gather)
        peers = Array(repeating: "", count: connections)
    }

    deinit {
        connections.deallocate()
        receiveBuffers.deallocate()
        slots.deallocate()
        headers.deallocate()
        chunkLists.deallocate()
        freeSlots.deallocate()
        writeVector.deallocate()
    }

    /// Connections in transmission (closing ones included until their last reply).
    package var connectionCount: Int {
        var n = 0
        for i in 0..<connectionCapacity where connections[i].inUse { n += 1 }
        return n
    }

    package var hasFreeConnection: Bool { connectionCount < connectionCapacity }

    /// Takes over a socket whose handshake just ended in transmission; `leftover` are bytes the
    /// client sent after its `NBD_OPT_GO` (already read). Returns the entry's index.
    package func adopt(fd: Int32, session: NBDSession, leftover: ArraySlice<UInt8>, peer: String, now: UInt64) -> Int? {
        guard let index = (0..<connectionCapacity).first(where: { !connections[$0].inUse }),
            leftover.count <= Self.receiveBufferSize
        else { return nil }
        let generation = connections[index].generation &+ 1
        var c = NBDConnection()
        c.fd = fd
        c.generation = generation
        c.inUse = true
        c.parser = NBDRequestParser(export: export, session: session)
        c.structured = session.structuredReplies
        c.contextID = session.allocationContext ?? 0
        c.readable = true
        c.connectedAt = now
        c.lastOutputProgress = now
        leftover.withUnsafeBytes { receiveBuffer(index).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        c.recvEnd = leftover.count
        connections[index] = c
        peers[index] = peer
        return index
    }

    @inline(__always)
    func receiveBuffer(_ c: Int) -> UnsafeMutableRawPointer { receiveBuffers + c * Self.receiveBufferSize }

    @inline(__always)
    func header(_ slot: Int32) -> UnsafeMutableRawPointer { headers + Int(slot) * Self.headerRoom }

    @inline(__always)
    func chunkList(_ slot: Int32) -> UnsafeMutablePointer<UInt16> {
        chunkLists + Int(slot) * NBDBufferPool.chunksPerMaximumRequest
    }

    /// Whether any connection can make progress on input now.
    package var hasInput: Bool {
        for i in 0..<connectionCapacity {
            let c = connections + i
            if c.pointee.inUse && c.pointee.readable && !c.pointee.closing && (!c.pointee.blocked || released) {
                return true
            }
        }
        return false
    }

    // MARK: - Slots

    /// A slot and `chunks` chunks for connection `c`, within its fair share; nil when not now.
    func takeSlot(for c: Int, chunks: Int) -> Int32? {
        let conn = connections + c
        guard freeSlotCount > 0, conn.pointee.slots < max(1, slotCapacity / 2),
            chunks == 0 || conn.pointee.chunks + chunks <= pool.chunkCount / 2 || conn.pointee.chunks == 0
        else { return nil }
        freeSlotCount -= 1
        let slot = freeSlots[freeSlotCount]
        guard pool.allocate(chunks, into: chunkList(slot)) else {
            freeSlotCount += 1
            return nil
        }
        conn.pointee.slots += 1
        conn.pointee.chunks += chunks
        var s = NBDSlot()
        s.connection = Int32(c)
        s.generation = conn.pointee.generation
        s.chunkCount = Int32(chunks)
        slots[Int(slot)] = s
        return slot
    }

    /// Gives a slot and its chunks back; frees the connection entry when it was the last thing
    /// a closing connection waited for.
    func releaseSlot(_ slot: Int32) {
        let s = slots + Int(slot)
        pool.release(Int(s.pointee.chunkCount), from: chunkList(slot))
        let c = Int(s.pointee.connection)
        let conn = connections + c
        if conn.pointee.inUse && conn.pointee.generation == s.pointee.generation {
            conn.pointee.slots -= 1
            conn.pointee.chunks -= Int(s.pointee.chunkCount)
        }
        s.pointee.phase = .free
        freeSlots[freeSlotCount] = slot
        freeSlotCount += 1
        released = true
        if conn.pointee.inUse && conn.pointee.generation == s.pointee.generation { retireIfDone(c) }
    }

    // MARK: - Ending connections

    /// Hard disconnect: the socket is shut down now (the client sees it at once), queued replies
    /// are dropped, and requests in the engine are dropped as they complete.
    package func disconnect(_ c: Int) {
        let conn = connections + c
        guard conn.pointee.inUse, !conn.pointee.dead else { return }
        conn.pointee.dead = true
        conn.pointee.closing = true
        shutdown(conn.pointee.fd, Int32(SHUT_RDWR))
        var slot = conn.pointee.queueHead
        conn.pointee.queueHead = -1
        conn.pointee.queueTail = -1
        while slot >= 0 {
            let next = slots[Int(slot)].next
            releaseSlot(slot)
            slot = next
        }
        switch conn.pointee.pending {
        case .payload(let s), .discard(let s): releaseSlot(s)
        case .none: break
        }
        conn.pointee.pending = .none
        retireIfDone(c)
    }

    /// Soft close (shutdown): no more requests are read; the connection goes once every reply
    /// it is owed has been written.
    package func close(_ c: Int) {
        guard connections[c].inUse else { return }
        connections[c].closing = true
        retireIfDone(c)
    }

    /// A closing connection with nothing left in the engine or its queue gives its entry back.
    /// The fd is the daemon's to unregister and close (it reads `closedSinceLastLook`).
    func retireIfDone(_ c: Int) {
        let conn = connections + c
        guard conn.pointee.inUse, conn.pointee.closing, conn.pointee.slots == 0 else { return }
        if !conn.pointee.dead { shutdown(conn.pointee.fd, Int32(SHUT_RDWR)) }
        conn.pointee.inUse = false
        conn.pointee.dead = true
        closedSinceLastLook.append((c, peers[c], conn.pointee.requests))
    }

    /// The fd of a connection entry (for the daemon's epoll bookkeeping).
    package func fd(of c: Int) -> Int32 { connections[c].fd }

    /// Disconnects clients whose replies have not moved for `stallNanos`. Returns how many.
    @discardableResult
    package func disconnectStalled(now: UInt64) -> Int {
        var n = 0
        for i in 0..<connectionCapacity {
            let c = connections + i
            if c.pointee.inUse && !c.pointee.dead && c.pointee.queueHead >= 0
                && now &- c.pointee.lastOutputProgress > Self.stallNanos
            {
                disconnect(i)
                n += 1
            }
        }
        return n
    }

    /// When the first client whose replies are queued would count as stalled (nil: none queued),
    /// so the daemon's timer runs only while a client owes it reading.
    package var nextStallDeadlineNanos: UInt64? {
        var next = UInt64.max
        for i in 0..<connectionCapacity {
            let c = connections + i
            if c.pointee.inUse && !c.pointee.dead && c.pointee.queueHead >= 0 {
                next = min(next, c.pointee.lastOutputProgress &+ Self.stallNanos &+ 1)
            }
        }
        return next == .max ? nil : next
    }

    /// For `ctl status`: one entry per connected client (the control path: this allocates).
    package func clients(now: UInt64) -> [(
        peer: String, requests: UInt64, inFlight: Int, structured: Bool, seconds: UInt64
    )] {
        (0..<connectionCapacity).compactMap { i in
            let c = connections[i]
            guard c.inUse else { return nil }
            return (peers[i], c.requests, c.slots, c.structured, (now &- c.connectedAt) / 1_000_000_000)
        }
    }
}
