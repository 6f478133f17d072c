import CLibAIO
import Glibc

/// The device side of one virtio 1.x split virtqueue living in guest memory.
///
/// Everything in the rings is written by a guest we do not trust, concurrently with us. So:
/// avail->idx is read with acquire and checked against the queue size; each avail entry and
/// each descriptor is read exactly once into a private copy; every buffer is translated through
/// `GuestMemory` with bounds checks; chains are bounded in descriptor count (the table size — a
/// loop cannot outrun it) and in total bytes; and a head is never handed out twice while in
/// flight. used->idx is ours: we keep the authoritative copy and only ever store it (release).
///
/// `~Copyable`: the in-flight bookkeeping must have one owner, and copies would silently fork it.
/// The ring pointers point into `GuestMemory`'s mappings; the owner drops (or rebuilds) the
/// queue before that memory is replaced or unmapped.
package struct SplitVirtqueue: ~Copyable {
    package let size: Int
    private let descriptors: UnsafeMutableRawPointer
    private let available: UnsafeMutableRawPointer
    private let used: UnsafeMutableRawPointer
    private let eventIndex: Bool
    private let indirect: Bool
    package let limits: VirtqueueLimits
    /// last_avail_idx: the next avail entry to take (GET_VRING_BASE returns it).
    package private(set) var lastAvailableIndex: UInt16
    /// Our copy of used->idx.
    package private(set) var usedIndex: UInt16
    private var signalledUsed: UInt16 = 0
    private var signalledUsedValid = false
    private var outstanding: [Bool]
    package private(set) var inFlight = 0
    package private(set) var fault: VirtqueueFault?
    /// The inflight region (INFLIGHT_SHMFD negotiated and SET_INFLIGHT_FD given), kept in step
    /// with pops and used entries; see `InflightQueue` for the protocol.
    private var inflight: InflightQueue?
    /// Heads a previous back-end took and never answered, in pop order: `pop` hands them out
    /// before it reads the avail ring.
    private let resubmit: [UInt16]
    private var resubmitted = 0
    /// used->idx including entries staged but not yet published.
    private var stagedUsedIndex: UInt16

    package static let descriptorNext: UInt16 = 1
    package static let descriptorWrite: UInt16 = 2
    package static let descriptorIndirect: UInt16 = 4
    package static let maxSize: UInt32 = 32768

    /// Byte sizes of the three parts for a queue of `size` entries (event fields included).
    package static func descriptorTableBytes(_ size: Int) -> Int { 16 * size }
    package static func availableRingBytes(_ size: Int) -> Int { 6 + 2 * size }
    package static func usedRingBytes(_ size: Int) -> Int { 6 + 8 * size }

    /// Starts a ring from SET_VRING_NUM (`size`), SET_VRING_ADDR (`addresses`, front-end user
    /// addresses) and SET_VRING_BASE (`lastAvailableIndex`) under the negotiated `features`.
    /// used->idx is taken from guest memory, as a reconnecting front-end left it. With an
    /// inflight region, the region decides instead: its last batch is settled, its heads still
    /// in flight are queued for resubmission and the avail ring resumes at used->idx plus their
    /// count (`InflightQueue.recover`); SET_VRING_BASE's value, which QEMU resets to used->idx
    /// when the back-end died, is not used.
    package init(
        size: UInt32, addresses: VhostUserVringAddress, lastAvailableIndex: UInt16, features: UInt64,
        memory: borrowing GuestMemory, limits: VirtqueueLimits, inflight: InflightQueue? = nil
    ) throws(VirtqueueSetupError) {
        guard size > 0, size <= Self.maxSize, size & (size - 1) == 0 else { throw .badSize(size) }
        let n = Int(size)
        guard addresses.descriptorTable % 16 == 0, addresses.availableRing % 2 == 0, addresses.usedRing % 4 == 0 else {
            throw .misaligned
        }
        guard
            let d = memory.translate(user: addresses.descriptorTable, length: UInt64(Self.descriptorTableBytes(n))),
            let a = memory.translate(user: addresses.availableRing, length: UInt64(Self.availableRingBytes(n))),
            let u = memory.translate(user: addresses.usedRing, length: UInt64(Self.usedRingBytes(n)))
        else { throw .ringNotMapped }
        let guestUsedIndex = clibaio_load_u16_relaxed(u + 2)
        var resumeAt = lastAvailableIndex
        var recovered: [UInt16] = []
        if var region = inflight {
            guard Int(region.descriptorCount) == n, region.size == n else {
                throw .inflightSizeMismatch(region: region.descriptorCount, queue: n)
            }
            recovered = region.recover(usedIndex: guestUsedIndex)
            resumeAt = guestUsedIndex &+ UInt16(recovered.count)
            self.inflight = region
        } else {
            self.inflight = nil
        }
        resubmit = recovered
        self.size = n
        descriptors = d
        available = a
        used = u
        eventIndex = features & VirtioFeatures.ringEventIndex != 0
        indirect = features & VirtioFeatures.ringIndirectDescriptors != 0
        self.limits = limits
        self.lastAvailableIndex = resumeAt
        usedIndex = guestUsedIndex
        stagedUsedIndex = guestUsedIndex
        outstanding = [Bool](repeating: false, count: n)
    }

    /// Heads recovered from the inflight region when the ring started.
    package var recoveredFromInflight: Int { resubmit.count }

    /// Heads recovered from the inflight region and not yet handed out again.
    package var pendingResubmissions: Int { resubmit.count - resubmitted }

    // MARK: - Taking requests

    /// Takes the next available chain, translating its data into `storage` (no allocation).
    package mutating func pop(into storage: UnsafeMutableBufferPointer<iovec>, memory: borrowing GuestMemory)
        -> VirtqueuePop
    {
        if let fault { return .broken(fault) }
        if resubmitted < resubmit.count {
            let head = resubmit[resubmitted]
            resubmitted += 1
            outstanding[Int(head)] = true
            inFlight += 1
            return walk(head: head, storage: storage, memory: memory)
        }
        let availableIndex = clibaio_load_u16_acquire(available + 2)
        let pending = availableIndex &- lastAvailableIndex
        if pending == 0 { return .empty }
        guard Int(pending) <= size else { return stop(.availableIndexJump(availableIndex)) }
        let head = clibaio_load_u16_relaxed(available + 4 + 2 * (Int(lastAvailableIndex) & (size - 1)))
        guard Int(head) < size else { return stop(.headOutOfRange(head)) }
        guard !outstanding[Int(head)] else { return stop(.headInFlight(head)) }
        lastAvailableIndex &+= 1
        outstanding[Int(head)] = true
        inFlight += 1
        inflight?.markPopped(head)
        if eventIndex { clibaio_store_u16_relaxed(used + 4 + 8 * size, lastAvailableIndex) }
        return walk(head: head, storage: storage, memory: memory)
    }

    private mutating func stop(_ fault: VirtqueueFault) -> VirtqueuePop {
        self.fault = fault
        return .broken(fault)
    }

    private func walk(head: UInt16, storage: UnsafeMutableBufferPointer<iovec>, memory: borrowing GuestMemory)
        -> VirtqueuePop
    {
        var table = UnsafeRawPointer(descriptors)
        var tableCount = size
        var index = Int(head)
        var visited = 0
        var inIndirect = false
        var header = clibaio_virtio_blk_outhdr()
        var headerFilled = 0
        var segments = 0
        var readableSegments = 0
        var seenWritable = false
        var readableBytes: UInt64 = 0
        var writableBytes: UInt64 = 0
        var total: UInt64 = 0
        while true {
            guard index < tableCount else {
                return .malformed(
                    head: head, .descriptorIndexOutOfRange(UInt16(truncatingIfNeeded: index)), status: nil)
            }
            visited += 1
            guard visited <= tableCount else { return .malformed(head: head, .chainTooLong, status: nil) }
            var d = clibaio_virtq_desc()
            clibaio_virtq_copy_desc(&d, table + 16 * index)
            if d.flags & Self.descriptorIndirect != 0 {
                guard indirect else { return .malformed(head: head, .indirectNotNegotiated, status: nil) }
                guard !inIndirect, visited == 1, d.flags & Self.descriptorNext == 0 else {
                    return .malformed(head: head, .indirectMisplaced, status: nil)
                }
                guard d.len > 0, d.len % 16 == 0, Int(d.len / 16) <= limits.maxIndirectEntries else {
                    return .malformed(head: head, .indirectBadLength, status: nil)
                }
                guard let t = memory.translate(guestPhysical: d.addr, length: UInt64(d.len)) else {
                    return .malformed(head: head, .addressOutOfRange, status: nil)
                }
                table = UnsafeRawPointer(t)
                tableCount = Int(d.len / 16)
                index = 0
                visited = 0
                inIndirect = true
                continue
            }
            let writable = d.flags & Self.descriptorWrite != 0
            if writable {
                seenWritable = true
            } else if seenWritable {
                return .malformed(head: head, .readableAfterWritable, status: nil)
            }
            total += UInt64(d.len)
            guard total <= limits.maxChainBytes else { return .malformed(head: head, .chainBytesExceeded, status: nil) }
            var address = d.addr
            var remaining = UInt64(d.len)
            while remaining > 0 {
                guard let (host, count) = memory.contiguousPrefix(guestPhysical: address, length: remaining) else {
                    return .malformed(head: head, .addressOutOfRange, status: nil)
                }
                var p = host
                var n = Int(count)
                if !writable && headerFilled < 16 {
                    let take = min(16 - headerFilled, n)
                    withUnsafeMutableBytes(of: &header) { clibaio_shared_copy($0.baseAddress! + headerFilled, p, take) }
                    headerFilled += take
                    p += take
                    n -= take
                }
                if n > 0 {
                    guard segments < storage.count else { return .malformed(head: head, .tooManySegments, status: nil) }
                    storage[segments] = iovec(iov_base: p, iov_len: n)
                    segments += 1
                    if writable {
                        writableBytes += UInt64(n)
                    } else {
                        readableSegments += 1
                        readableBytes += UInt64(n)
                    }
                }
                address &+= count
                remaining -= count
            }
            if d.flags & Self.descriptorNext == 0 { break }
            index = Int(d.next)
        }
        // Readable descriptors come first, so the last segment is writable iff any is.
        guard segments > readableSegments else { return .malformed(head: head, .noStatusByte, status: nil) }
        let last = segments - 1
        let status = (storage[last].iov_base! + storage[last].iov_len - 1).assumingMemoryBound(to: UInt8.self)
        storage[last].iov_len -= 1
        writableBytes -= 1
        if storage[last].iov_len == 0 { segments -= 1 }
        guard headerFilled == 16 else { return .malformed(head: head, .headerTooShort, status: status) }
        return .chain(
            VirtqueueChain(
                head: head, type: UInt32(littleEndian: header.type), ioprio: UInt32(littleEndian: header.ioprio),
                sector: UInt64(littleEndian: header.sector), readableSegments: readableSegments,
                writableSegments: segments - readableSegments, readableBytes: readableBytes,
                writableBytes: writableBytes, status: status))
    }

    // MARK: - Completing requests

    /// Publishes the used element for `head` (`writtenBytes`: bytes written into device-writable
    /// buffers, status byte included) and then used->idx with release ordering: a batch of one.
    /// False, and nothing written, when `head` is not in flight (an engine bug, never guest
    /// input).
    @discardableResult
    package mutating func complete(head: UInt16, writtenBytes: UInt32) -> Bool {
        guard stageUsed(head: head, writtenBytes: writtenBytes) else { return false }
        publishUsed()
        return true
    }

    /// Writes the used element for `head` past used->idx without publishing it, and links the
    /// head into the inflight region's batch. Any number may be staged; `publishUsed` makes them
    /// visible at once.
    @discardableResult
    package mutating func stageUsed(head: UInt16, writtenBytes: UInt32) -> Bool {
        guard Int(head) < size, outstanding[Int(head)] else { return false }
        outstanding[Int(head)] = false
        inFlight -= 1
        inflight?.stage(head)
        let element = used + 4 + 8 * (Int(stagedUsedIndex) & (size - 1))
        clibaio_store_u32_relaxed(element, UInt32(head).littleEndian)
        clibaio_store_u32_relaxed(element + 4, writtenBytes.littleEndian)
        stagedUsedIndex &+= 1
        return true
    }

    /// Publishes every staged used element with one release store of used->idx, then settles
    /// the inflight region (clears the batch's heads, records used->idx). One store per batch
    /// is what lets a restarted back-end tell which heads were published (`InflightQueue`).
    package mutating func publishUsed() {
        guard stagedUsedIndex != usedIndex else { return }
        usedIndex = stagedUsedIndex
        clibaio_store_u16_release(used + 2, usedIndex)
        inflight?.settle(usedIndex: usedIndex)
    }

    /// Whether the guest wants an interrupt for what `complete` published since the last call.
    /// With EVENT_IDX: `vring_need_event(used_event, new, old)`; without: unless the guest set
    /// VRING_AVAIL_F_NO_INTERRUPT. The full fence orders our used->idx store before the read.
    package mutating func shouldNotify() -> Bool {
        clibaio_fence_seq_cst()
        if eventIndex {
            let usedEvent = clibaio_load_u16_relaxed(available + 4 + 2 * size)
            let old = signalledUsed
            let valid = signalledUsedValid
            signalledUsed = usedIndex
            signalledUsedValid = true
            return !valid || Self.needEvent(eventIndex: usedEvent, new: usedIndex, old: old)
        }
        return clibaio_load_u16_relaxed(available) & 1 == 0
    }

    /// vring_need_event: true when `eventIndex` lies in the window `[old, new)` of used entries
    /// published since the last notification (16-bit wrapping arithmetic).
    @inline(__always)
    package static func needEvent(eventIndex: UInt16, new: UInt16, old: UInt16) -> Bool {
        (new &- eventIndex &- 1) < (new &- old)
    }

    /// Asks the guest to kick for the next buffer (avail_event = last_avail_idx with EVENT_IDX,
    /// used->flags = 0 without) and returns true when buffers arrived in the meantime — the
    /// caller must then pop again instead of sleeping, or a kick could be lost.
    package func enableNotifications() -> Bool {
        if eventIndex {
            clibaio_store_u16_relaxed(used + 4 + 8 * size, lastAvailableIndex)
        } else {
            clibaio_store_u16_relaxed(used, 0)
        }
        clibaio_fence_seq_cst()
        return resubmitted < resubmit.count || clibaio_load_u16_acquire(available + 2) != lastAvailableIndex
    }

    /// Chains are available to `pop` (read without arming notifications: the polling check).
    @inline(__always)
    package var hasAvailable: Bool {
        fault == nil
            && (resubmitted < resubmit.count || clibaio_load_u16_acquire(available + 2) != lastAvailableIndex)
    }
}
