import CLibAIO
import Glibc

/// Why the device refused a request. With REPLY_ACK negotiated and need-reply set, the refusal is
/// answered with a non-zero ack; otherwise the connection ends (the protocol has no other way to
/// say no).
package enum VhostUserDeviceError: Error, Equatable, Sendable {
    case message(VhostUserError)
    case memory(GuestMemoryError)
    case queue(VirtqueueSetupError)
    /// Features or protocol features outside what was offered.
    case unofferedFeatures(UInt64)
    /// A vring index other than 0 (one queue, no MQ).
    case badVringIndex(UInt32)
    /// SET_VRING_BASE above 0xffff.
    case badVringBase(UInt32)
    /// A request this device never negotiates (log, postcopy, status, mem slots...).
    case unsupported(VhostUserRequest)
    /// The ring cannot start: no memory table, size or addresses yet.
    case ringNotConfigured
    /// GET_VRING_BASE or SET_MEM_TABLE while requests are still in flight: drain them first.
    case requestsInFlight(Int)
    /// GET_INFLIGHT_FD or SET_INFLIGHT_FD refused (shape, size, seals), or sent without
    /// INFLIGHT_SHMFD negotiated or while the ring runs (its queue points into the region).
    case inflight(InflightRegionError?)
    /// A GET_CONFIG window outside the 256-byte config space.
    case badConfigWindow(offset: UInt32, size: UInt32)
    /// A kick or call fd that is not a counting eventfd (or a kick without any fd): a pipe or
    /// socket could block the daemon's one thread or make epoll report it ready forever.
    case badEventFD(VhostUserRequest)
}

/// The control plane of one vhost-user-blk connection: answers the front-end's messages and owns
/// what they set up — guest memory, the one virtqueue, the kick and call eventfds.
///
/// `~Copyable` sole owner: dropping it (a disconnect) closes the eventfds, drops the queue and
/// then unmaps guest memory, in that order. The data plane (`pop`, `complete`, `notify`) runs on
/// the same owner; it performs no allocation.
package struct VhostUserDevice: ~Copyable {
    package let configuration: VhostUserDeviceConfiguration
    package private(set) var features: UInt64 = 0
    package private(set) var protocolFeatures: UInt64 = 0
    package private(set) var enabled = false
    package private(set) var queue: SplitVirtqueue?
    package private(set) var memory = GuestMemory()
    private var queueSize: UInt32 = 0
    private var addresses: VhostUserVringAddress?
    private var base: UInt16 = 0
    package private(set) var kick: FileDescriptor?
    private var kickRawValue: Int32 = -1
    package private(set) var call: FileDescriptor?
    /// Counts rings built (SET_VRING_KICK, SET_MEM_TABLE): a broken ring's fault is sticky only
    /// until the front-end sets a new one up.
    package private(set) var queueStarts: UInt64 = 0
    /// The inflight region (GET_INFLIGHT_FD made it or SET_INFLIGHT_FD handed it over): the
    /// queue keeps it in step, and QEMU keeps its fd for the next back-end after a restart.
    package private(set) var inflight: InflightRegion?
    /// The fd to send with the reply just returned (GET_INFLIGHT_FD's memfd; -1: none). Owned by
    /// `inflight`; `takeReplyDescriptor` hands it to the sender once.
    private var replyDescriptor: Int32 = -1

    package init(configuration: VhostUserDeviceConfiguration) { self.configuration = configuration }

    /// The kick eventfd to poll (nil: none yet, or the front-end asked for polling).
    package var kickDescriptor: Int32? { kickRawValue >= 0 ? kickRawValue : nil }

    /// last_avail_idx of the running ring (nil: no ring).
    package var lastAvailableIndex: UInt16? {
        switch queue {
        case .some(let q): q.lastAvailableIndex
        case .none: nil
        }
    }

    /// Requests the running ring took over from the inflight region when it started.
    package var recoveredFromInflight: Int {
        switch queue {
        case .some(let q): q.recoveredFromInflight
        case .none: 0
        }
    }

    /// Requests popped and not yet completed.
    package var inFlight: Int {
        switch queue {
        case .some(let q): q.inFlight
        case .none: 0
        }
    }

    package var offeredFeatures: UInt64 {
        VirtioFeatures.offered(readOnly: configuration.readOnly, discard: configuration.discard)
    }

    /// Whether requests may be taken: the ring is set up, enabled and has a kick fd.
    package var isRunning: Bool { queue != nil && enabled }

    // MARK: - Control plane

    /// Whether `message` must wait until the in-flight requests have completed: it stops or
    /// remaps the ring (GET_VRING_BASE, SET_MEM_TABLE, RESET_OWNER, RESET_DEVICE) while I/O still
    /// points into guest memory. The caller keeps the message, stops reading the socket, drains,
    /// then calls `handle`. (`handle` refuses such a message with `.requestsInFlight` as a last
    /// line of defence; RESET_* would otherwise unmap under the kernel's feet.)
    package func mustWaitForDrain(_ message: borrowing VhostUserMessage) -> Bool {
        guard inFlight > 0 else { return false }
        switch message.request {
        case .getVringBase, .setMemTable, .resetOwner, .resetDevice: return true
        default: return false
        }
    }

    /// Handles one message and returns the bytes to send back (nil: nothing). Throws when the
    /// connection must end.
    package mutating func handle(_ message: consuming VhostUserMessage) throws(VhostUserDeviceError) -> [UInt8]? {
        let request = message.request
        let wantsAck = message.header.needsReply && protocolFeatures & VhostUserProtocolFeatures.replyAck != 0
        do throws(VhostUserDeviceError) {
            let reply = try apply(&message)
            if reply == nil && wantsAck && !request.hasReply { return VhostUserReply.ack(request, success: true) }
            return reply
        } catch {
            if wantsAck && !request.hasReply { return VhostUserReply.ack(request, success: false) }
            throw error
        }
    }

    private mutating func apply(_ m: inout VhostUserMessage) throws(VhostUserDeviceError) -> [UInt8]? {
        do {
            switch m.request {
            case .getFeatures:
                return VhostUserReply.u64(.getFeatures, offeredFeatures)
            case .setFeatures:
                let f = try decode { () throws(VhostUserError) in try m.u64() }
                guard f & ~offeredFeatures == 0 else { throw VhostUserDeviceError.unofferedFeatures(f) }
                features = f
                // Without PROTOCOL_FEATURES a ring runs as soon as it has a kick fd.
                if f & VirtioFeatures.vhostUserProtocolFeatures == 0 { enabled = true }
            case .getProtocolFeatures:
                return VhostUserReply.u64(.getProtocolFeatures, VhostUserProtocolFeatures.offered)
            case .setProtocolFeatures:
                let f = try decode { () throws(VhostUserError) in try m.u64() }
                guard f & ~VhostUserProtocolFeatures.offered == 0 else {
                    throw VhostUserDeviceError.unofferedFeatures(f)
                }
                protocolFeatures = f
            case .getQueueNum:
                return VhostUserReply.u64(.getQueueNum, 1)
            case .getMaxMemSlots:
                return VhostUserReply.u64(.getMaxMemSlots, UInt64(VhostUserLimits.maxMemoryRegions))
            case .setOwner:
                // The connection is the session: there is no other front-end to take it from, and
                // nothing that SET_OWNER unlocks. Accepted so that front-ends which send it work.
                break
            case .resetOwner, .resetDevice:
                if inFlight > 0 { throw VhostUserDeviceError.requestsInFlight(inFlight) }
                reset()
            case .setMemTable:
                try setMemoryTable(&m)
            case .setVringNum:
                let s = try vring(decode { () throws(VhostUserError) in try m.vringState() })
                guard s.num > 0, s.num & (s.num - 1) == 0, s.num <= configuration.maxQueueSize else {
                    throw VhostUserDeviceError.queue(.badSize(s.num))
                }
                queueSize = s.num
            case .setVringAddr:
                let a = try decode { () throws(VhostUserError) in try m.vringAddress() }
                _ = try vring(VhostUserVringState(index: a.index, num: 0))
                addresses = a
            case .setVringBase:
                let s = try vring(decode { () throws(VhostUserError) in try m.vringState() })
                guard s.num <= 0xffff else { throw VhostUserDeviceError.badVringBase(s.num) }
                base = UInt16(s.num)
            case .getVringBase:
                let s = try vring(decode { () throws(VhostUserError) in try m.vringState() })
                if inFlight > 0 {
                    throw VhostUserDeviceError.requestsInFlight(inFlight)
                }
                let last = lastAvailableIndex ?? base
                stopQueue()
                base = last
                return VhostUserReply.vringState(.getVringBase, VhostUserVringState(index: s.index, num: UInt32(last)))
            case .setVringKick:
                let f = try decode { () throws(VhostUserError) in try m.vringFile() }
                _ = try vring(VhostUserVringState(index: f.index, num: 0))
                // No polling mode: the disk's loop sleeps in epoll and needs the kick.
                guard f.hasDescriptor, let fd = m.descriptors.take(0) else { throw .badEventFD(.setVringKick) }
                try Self.checkEventFD(fd, .setVringKick)
                kickRawValue = fd.rawValue
                kick = consume fd
                // A running ring only changes its kick: rebuilding it would forget the chains in
                // flight (their heads could be handed out again, and the drain guards, which count
                // the queue's in-flight chains, would let guest memory be unmapped under them).
                if queue == nil { try startQueue() }
            case .setVringCall:
                let f = try decode { () throws(VhostUserError) in try m.vringFile() }
                _ = try vring(VhostUserVringState(index: f.index, num: 0))
                if f.hasDescriptor, let fd = m.descriptors.take(0) {
                    try Self.checkEventFD(fd, .setVringCall)
                    call = consume fd
                } else {
                    call = nil
                }
            case .setVringErr:
                _ = try vring(
                    VhostUserVringState(
                        index: try decode { () throws(VhostUserError) in try m.vringFile() }.index, num: 0))  // fd closed with the message
            case .setVringEnable:
                let s = try vring(decode { () throws(VhostUserError) in try m.vringState() })
                enabled = s.num != 0
            case .getInflightFD:
                let d = try decode { () throws(VhostUserError) in try m.inflightDescription() }
                try checkInflightAllowed()
                let region: InflightRegion
                do throws(InflightRegionError) {
                    region = try InflightRegion.create(
                        queueCount: d.queueCount, queueSize: d.queueSize, maxQueueSize: configuration.maxQueueSize)
                } catch {
                    throw .inflight(error)
                }
                replyDescriptor = region.descriptor.rawValue
                let reply = VhostUserReply.inflight(region.description)
                inflight = consume region
                return reply
            case .setInflightFD:
                let d = try decode { () throws(VhostUserError) in try m.inflightDescription() }
                try checkInflightAllowed()
                guard let fd = m.descriptors.take(0) else { throw .inflight(nil) }
                inflight = nil
                do throws(InflightRegionError) {
                    inflight = try InflightRegion(
                        adopting: fd, description: d, maxQueueSize: configuration.maxQueueSize,
                        requireShrinkSeal: configuration.requireShrinkSealedMemory)
                } catch {
                    throw .inflight(error)
                }
            case .getConfig:
                let access = try decode { () throws(VhostUserError) in try m.configAccess() }
                guard let window = configuration.config.window(offset: access.offset, size: access.size) else {
                    throw VhostUserDeviceError.badConfigWindow(offset: access.offset, size: access.size)
                }
                return VhostUserReply.config(access, window: window)
            default:
                throw VhostUserDeviceError.unsupported(m.request)
            }
            return nil
        }
    }

    /// The region may be made or replaced only when negotiated and while no queue points into it.
    private func checkInflightAllowed() throws(VhostUserDeviceError) {
        guard protocolFeatures & VhostUserProtocolFeatures.inflightSharedMemory != 0, queue == nil else {
            throw .inflight(nil)
        }
    }

    /// The fd that must travel with the reply `handle` just returned (-1: none), once.
    package mutating func takeReplyDescriptor() -> Int32 {
        defer { replyDescriptor = -1 }
        return replyDescriptor
    }

    /// Lifts a payload accessor's error (cannot happen after `VhostUserMessage` validated the
    /// size, but typed throws keep it honest).
    private func decode<T>(_ body: () throws(VhostUserError) -> T) throws(VhostUserDeviceError) -> T {
        do { return try body() } catch { throw .message(error) }
    }

    private func vring(_ s: VhostUserVringState) throws(VhostUserDeviceError) -> VhostUserVringState {
        guard s.index == 0 else { throw .badVringIndex(s.index) }
        return s
    }

    private mutating func setMemoryTable(_ m: inout VhostUserMessage) throws(VhostUserDeviceError) {
        if inFlight > 0 { throw .requestsInFlight(inFlight) }
        let regions: [VhostUserMemoryRegion]
        do throws(VhostUserError) { regions = try m.memoryRegions() } catch { throw .message(error) }
        let fresh: GuestMemory
        do throws(GuestMemoryError) {
            fresh = try GuestMemory(
                regions: regions, descriptors: m.descriptors,
                requireShrinkSeal: configuration.requireShrinkSealedMemory)
        } catch {
            throw .memory(error)
        }
        // The ring pointers point into the old mappings: rebuild the queue over the new ones.
        let running = queue != nil
        let last = lastAvailableIndex ?? base
        queue = nil
        memory = fresh
        base = last
        if running { try startQueue() }
    }

    private mutating func startQueue() throws(VhostUserDeviceError) {
        guard !memory.isEmpty, queueSize > 0, let addresses else { throw .ringNotConfigured }
        let fresh: SplitVirtqueue
        do throws(VirtqueueSetupError) {
            fresh = try SplitVirtqueue(
                size: queueSize, addresses: addresses, lastAvailableIndex: base, features: features, memory: memory,
                limits: VirtqueueLimits(maxChainBytes: configuration.maxChainBytes), inflight: inflight?.queue(0))
        } catch {
            throw .queue(error)
        }
        queue = consume fresh
        queueStarts &+= 1
    }

    /// A kick or call fd must be a counting eventfd; it is made non-blocking (QEMU's already
    /// are: the flag is on the shared open file, so this changes nothing for QEMU), so that a
    /// saturated counter makes our write fail instead of blocking the disk's one thread.
    private static func checkEventFD(_ fd: borrowing FileDescriptor, _ request: VhostUserRequest)
        throws(VhostUserDeviceError)
    {
        var semaphore: Int32 = 0
        guard clibaio_fd_is_eventfd(fd.rawValue, &semaphore) == 1, semaphore == 0 else {
            throw .badEventFD(request)
        }
        let flags = fcntl(fd.rawValue, F_GETFL)
        guard flags >= 0, flags & O_NONBLOCK != 0 || fcntl(fd.rawValue, F_SETFL, flags | O_NONBLOCK) == 0 else {
            throw .badEventFD(request)
        }
    }

    private mutating func stopQueue() {
        queue = nil
        kick = nil
        kickRawValue = -1
        enabled = false
    }

    /// Back to the state of a fresh connection (RESET_OWNER, RESET_DEVICE). Callers drain
    /// in-flight I/O first: the mappings go away here.
    package mutating func reset() {
        stopQueue()
        call = nil
        memory = GuestMemory()
        inflight = nil
        features = 0
        protocolFeatures = 0
        queueSize = 0
        addresses = nil
        base = 0
    }

    // MARK: - Data plane

    /// The next chain, if the ring runs (`.empty` otherwise).
    package mutating func pop(into storage: UnsafeMutableBufferPointer<iovec>) -> VirtqueuePop {
        guard enabled, queue != nil else { return .empty }
        return queue!.pop(into: storage, memory: memory)
    }

    /// Completes a head and returns false when it was not in flight.
    @discardableResult
    package mutating func complete(head: UInt16, writtenBytes: UInt32) -> Bool {
        guard queue != nil else { return false }
        return queue!.complete(head: head, writtenBytes: writtenBytes)
    }

    /// Signals the call eventfd when the guest wants an interrupt for what was completed.
    package mutating func notifyIfNeeded() {
        // The call fd first: without one, `shouldNotify` must not advance what was signalled,
        // or completions made meanwhile would never be announced once a call fd arrives.
        guard queue != nil, call != nil, queue!.shouldNotify() else { return }
        call!.signal()
    }

    /// Chains are waiting (no notification is armed: the polling check).
    package var hasAvailable: Bool {
        guard enabled else { return false }
        switch queue {
        case .some(let q): return q.hasAvailable
        case .none: return false
        }
    }

    /// Re-arms guest kicks; true when buffers arrived meanwhile (pop again before sleeping).
    package func enableNotifications() -> Bool {
        // A disabled ring cannot be popped: reporting its entries would make the loop spin.
        guard enabled, queue != nil else { return false }
        return queue!.enableNotifications()
    }
}
