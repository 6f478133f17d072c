import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// The device control plane fed the messages QEMU sends (docs/vhost-user.md), without QEMU:
/// negotiation, REPLY_ACK, ring setup over a memfd, the data plane through the device, ring stop
/// and reset.
@Suite struct VhostUserDeviceTests {
    typealias T = VhostUserTest
    static let configuration = VhostUserDeviceConfiguration(capacitySectors: 2048, blockSize: 512, readOnly: false)
    static let regionBase: UInt64 = 0x10_0000
    static let userBase: UInt64 = 0x7f00_0000_0000

    private func message(
        _ request: VhostUserRequest, flags: UInt32 = 1, payload: [UInt8] = [], fds: [Int32] = []
    ) throws -> VhostUserMessage {
        try VhostUserMessage(
            header: VhostUserHeader(request: request.rawValue, flags: flags, size: UInt32(payload.count)),
            payload: payload, descriptors: ReceivedDescriptors(adopting: fds))
    }

    private func state(_ index: UInt32, _ num: UInt32) -> [UInt8] { T.le(index) + T.le(num) }

    /// Drives `device` through the sequence QEMU sends for Linux, up to an enabled ring of 8.
    private func start(_ device: inout VhostUserDevice, call: borrowing FileDescriptor) throws {
        let ack: [UInt8] = VhostUserReply.ack(.setMemTable, success: true)
        _ = try device.handle(message(.getFeatures))
        _ = try device.handle(message(.getProtocolFeatures))
        #expect(
            try device.handle(message(.setProtocolFeatures, payload: T.le(VhostUserProtocolFeatures.offered))) == nil)
        #expect(try device.handle(message(.setOwner)) == nil)
        #expect(try device.handle(message(.setFeatures, payload: T.le(device.offeredFeatures))) == nil)
        let memfd = try T.memfd(bytes: 0x10_0000)
        let table = T.memoryTablePayload([
            VhostUserMemoryRegion(
                guestPhysicalAddress: Self.regionBase, size: 0x10_0000, userAddress: Self.userBase, mmapOffset: 0)
        ])
        #expect(try device.handle(message(.setMemTable, flags: 9, payload: table, fds: [memfd.release()])) == ack)
        #expect(try device.handle(message(.setVringNum, payload: state(0, 8))) == nil)
        #expect(try device.handle(message(.setVringBase, payload: state(0, 0))) == nil)
        let addr =
            T.le(UInt32(0)) + T.le(UInt32(0)) + T.le(Self.userBase) + T.le(Self.userBase + 0x2000)
            + T.le(Self.userBase + 0x1000) + T.le(UInt64(0))
        #expect(try device.handle(message(.setVringAddr, payload: addr)) == nil)
        let kick = try FileDescriptor.eventFD()
        #expect(try device.handle(message(.setVringKick, payload: T.le(UInt64(0)), fds: [kick.release()])) == nil)
        #expect(
            try device.handle(message(.setVringCall, payload: T.le(UInt64(0)), fds: [call.duplicate().release()]))
                == nil)
        #expect(device.isRunning == false)  // PROTOCOL_FEATURES: rings start disabled
        #expect(try device.handle(message(.setVringEnable, payload: state(0, 1))) == nil)
        #expect(device.isRunning && device.kickDescriptor != nil)
    }

    @Test func negotiationOffersWhatTheDeviceDoes() throws {
        var device = VhostUserDevice(configuration: Self.configuration)
        let offered = device.offeredFeatures
        #expect(try device.handle(message(.getFeatures)) == VhostUserReply.u64(.getFeatures, offered))
        for bit in [
            VirtioFeatures.version1, VirtioFeatures.ringEventIndex, VirtioFeatures.ringIndirectDescriptors,
            VirtioFeatures.vhostUserProtocolFeatures, VirtioFeatures.blkFlush, VirtioFeatures.blkSegMax,
            VirtioFeatures.blkSizeMax, VirtioFeatures.blkBlockSize, VirtioFeatures.blkDiscard,
            VirtioFeatures.blkWriteZeroes,
        ] {
            #expect(offered & bit != 0)
        }
        #expect(offered & VirtioFeatures.blkReadOnly == 0)
        #expect(
            try device.handle(message(.getProtocolFeatures))
                == VhostUserReply.u64(
                    .getProtocolFeatures,
                    VhostUserProtocolFeatures.replyAck | VhostUserProtocolFeatures.config
                        | VhostUserProtocolFeatures.inflightSharedMemory))
        #expect(try device.handle(message(.getQueueNum)) == VhostUserReply.u64(.getQueueNum, 1))
        // MQ (bit 12) was not offered: without REPLY_ACK the connection ends...
        #expect(throws: VhostUserDeviceError.unofferedFeatures(offered | 1 << 12)) {
            _ = try device.handle(message(.setFeatures, payload: T.le(offered | 1 << 12)))
        }
        #expect(throws: VhostUserDeviceError.unofferedFeatures(VhostUserProtocolFeatures.multiQueue)) {
            _ = try device.handle(message(.setProtocolFeatures, payload: T.le(VhostUserProtocolFeatures.multiQueue)))
        }
        // ...with REPLY_ACK and need-reply it is answered with a failing ack.
        _ = try device.handle(message(.setProtocolFeatures, payload: T.le(VhostUserProtocolFeatures.replyAck)))
        #expect(
            try device.handle(message(.setFeatures, flags: 9, payload: T.le(offered | 1 << 12)))
                == VhostUserReply.ack(.setFeatures, success: false))
        #expect(try device.handle(message(.setOwner, flags: 9)) == VhostUserReply.ack(.setOwner, success: true))

        var readOnly = Self.configuration
        readOnly.readOnly = true
        let ro = VhostUserDevice(configuration: readOnly).offeredFeatures
        #expect(ro & VirtioFeatures.blkReadOnly != 0 && ro & VirtioFeatures.blkDiscard == 0)
    }

    @Test func sealedMemoryCanBeRequired() throws {
        var strict = Self.configuration
        strict.requireShrinkSealedMemory = true
        var device = VhostUserDevice(configuration: strict)
        let memfd = try T.memfd(bytes: 0x1000)
        let table = T.memoryTablePayload([
            VhostUserMemoryRegion(guestPhysicalAddress: 0, size: 0x1000, userAddress: 0, mmapOffset: 0)
        ])
        #expect(throws: VhostUserDeviceError.memory(.notSealedAgainstShrink(index: 0))) {
            _ = try device.handle(message(.setMemTable, payload: table, fds: [memfd.duplicate().release()]))
        }
        #expect(device.memory.isEmpty == true)
    }

    @Test func configWindowsComeFromTheConfigSpace() throws {
        var device = VhostUserDevice(configuration: Self.configuration)
        let get = T.le(UInt32(0)) + T.le(UInt32(57)) + T.le(UInt32(0)) + [UInt8](repeating: 0, count: 57)
        let reply = try #require(try device.handle(message(.getConfig, payload: get)))
        #expect(Array(reply[24...]) == Array(Self.configuration.config.bytes().prefix(57)))
        #expect(Array(reply[0..<12]) == T.header(24, flags: 5, size: 69))
        let wild = T.le(UInt32(250)) + T.le(UInt32(10)) + T.le(UInt32(0)) + [UInt8](repeating: 0, count: 10)
        #expect(throws: VhostUserDeviceError.badConfigWindow(offset: 250, size: 10)) {
            _ = try device.handle(message(.getConfig, payload: wild))
        }
        #expect(throws: VhostUserDeviceError.unsupported(.setConfig)) {
            _ = try device.handle(
                message(.setConfig, payload: T.le(UInt32(32)) + T.le(UInt32(1)) + T.le(UInt32(0)) + [1]))
        }
    }

    @Test func vringRequestsAreCheckedBeforeTheRingStarts() throws {
        var device = VhostUserDevice(configuration: Self.configuration)
        #expect(throws: VhostUserDeviceError.badVringIndex(1)) {
            _ = try device.handle(message(.setVringNum, payload: state(1, 8)))
        }
        #expect(throws: VhostUserDeviceError.queue(.badSize(2048))) {
            _ = try device.handle(message(.setVringNum, payload: state(0, 2048)))
        }
        #expect(throws: VhostUserDeviceError.badVringBase(0x10000)) {
            _ = try device.handle(message(.setVringBase, payload: state(0, 0x10000)))
        }
        let kick = try FileDescriptor.eventFD()
        #expect(throws: VhostUserDeviceError.ringNotConfigured) {
            _ = try device.handle(message(.setVringKick, payload: T.le(UInt64(0)), fds: [kick.duplicate().release()]))
        }
        #expect(throws: VhostUserDeviceError.unsupported(.setStatus)) {
            _ = try device.handle(message(.setStatus, payload: T.le(UInt64(0xf))))
        }
        #expect(throws: VhostUserDeviceError.unsupported(.getStatus)) {
            _ = try device.handle(message(.getStatus))
        }
    }

    @Test func requestsFlowThroughTheDeviceAndTheRingStopsCleanly() throws {
        var device = VhostUserDevice(configuration: Self.configuration)
        let call = try FileDescriptor.eventFD()
        try start(&device, call: call)
        // Guest side: a FLUSH chain at head 0, then avail->idx = 1.
        let mem = device.memory.translate(guestPhysical: Self.regionBase, length: 0x10_0000)!
        func desc(_ i: Int, _ addr: UInt64, _ len: UInt32, _ flags: UInt16, _ next: UInt16) {
            (mem + 16 * i).storeBytes(of: addr, as: UInt64.self)
            (mem + 16 * i).storeBytes(of: len, toByteOffset: 8, as: UInt32.self)
            (mem + 16 * i).storeBytes(of: flags, toByteOffset: 12, as: UInt16.self)
            (mem + 16 * i).storeBytes(of: next, toByteOffset: 14, as: UInt16.self)
        }
        (mem + 0x8000).storeBytes(of: VirtioBlkType.flush, as: UInt32.self)
        desc(0, Self.regionBase + 0x8000, 16, 1, 1)
        desc(1, Self.regionBase + 0x8010, 1, 2, 0)
        (mem + 0x1000).storeBytes(of: UInt16(1), toByteOffset: 2, as: UInt16.self)
        let iov = IovecStorage(Self.configuration.iovecCapacity)
        let chain = try #require(device.pop(into: iov.buffer).chain)
        #expect(chain.type == VirtioBlkType.flush)
        let stop = try message(.getVringBase, payload: state(0, 0))
        #expect(device.mustWaitForDrain(stop) == true)
        let enable = try message(.setVringEnable, payload: state(0, 1))
        #expect(device.mustWaitForDrain(enable) == false)
        #expect(throws: VhostUserDeviceError.requestsInFlight(1)) {
            _ = try device.handle(message(.getVringBase, payload: state(0, 0)))
        }
        #expect(throws: VhostUserDeviceError.requestsInFlight(1)) { _ = try device.handle(message(.resetOwner)) }
        #expect(device.isRunning == true)  // a refused stop leaves the ring alone
        VirtioBlkStatus.ok.write(to: chain.status)
        #expect(device.complete(head: 0, writtenBytes: 1) == true)
        device.notifyIfNeeded()
        #expect(call.drain() == 1)  // the guest was interrupted
        #expect(device.mustWaitForDrain(stop) == false)
        #expect((mem + 0x2000).load(fromByteOffset: 2, as: UInt16.self) == 1)  // used->idx

        // A new memory table while running rebuilds the ring where it stood.
        let memfd = try T.memfd(bytes: 0x10_0000)
        let table = T.memoryTablePayload([
            VhostUserMemoryRegion(
                guestPhysicalAddress: Self.regionBase, size: 0x10_0000, userAddress: Self.userBase, mmapOffset: 0)
        ])
        _ = try device.handle(message(.setMemTable, payload: table, fds: [memfd.release()]))
        #expect(device.isRunning && device.lastAvailableIndex == 1)

        _ = try device.handle(message(.setVringEnable, payload: state(0, 0)))
        #expect(
            try device.handle(message(.getVringBase, payload: state(0, 0)))
                == VhostUserReply.vringState(.getVringBase, VhostUserVringState(index: 0, num: 1)))
        #expect(!device.isRunning && device.kickDescriptor == nil && device.lastAvailableIndex == nil)
        device.reset()
        #expect(device.memory.isEmpty && device.call == nil && device.features == 0)
    }

    /// Review finding: SET_VRING_KICK on a running ring rebuilt it, forgetting the chain in
    /// flight (the drain guards then let SET_MEM_TABLE unmap guest memory under it, and its head
    /// could be handed out again). Now it only swaps the kick.
    @Test func newKickKeepsTheRunningRingAndItsChainsInFlight() throws {
        var device = VhostUserDevice(configuration: Self.configuration)
        let call = try FileDescriptor.eventFD()
        try start(&device, call: call)
        let mem = device.memory.translate(guestPhysical: Self.regionBase, length: 0x10_0000)!
        (mem + 0x8000).storeBytes(of: VirtioBlkType.flush, as: UInt32.self)
        (mem + 0).storeBytes(of: Self.regionBase + 0x8000, as: UInt64.self)
        (mem + 8).storeBytes(of: UInt32(16), as: UInt32.self)
        (mem + 12).storeBytes(of: UInt16(1), as: UInt16.self)
        (mem + 14).storeBytes(of: UInt16(1), as: UInt16.self)
        (mem + 16).storeBytes(of: Self.regionBase + 0x8010, as: UInt64.self)
        (mem + 24).storeBytes(of: UInt32(1), as: UInt32.self)
        (mem + 28).storeBytes(of: UInt16(2), as: UInt16.self)
        (mem + 0x1000).storeBytes(of: UInt16(1), toByteOffset: 2, as: UInt16.self)
        let iov = IovecStorage(Self.configuration.iovecCapacity)
        _ = try #require(device.pop(into: iov.buffer).chain)
        let newKick = try FileDescriptor.eventFD()
        _ = try device.handle(message(.setVringKick, payload: T.le(UInt64(0)), fds: [newKick.release()]))
        let (inFlight, last) = (device.inFlight, device.lastAvailableIndex)
        #expect(inFlight == 1 && last == 1, "the ring was rebuilt")
        let memfd = try T.memfd(bytes: 0x10_0000)
        let table = T.memoryTablePayload([
            VhostUserMemoryRegion(
                guestPhysicalAddress: Self.regionBase, size: 0x10_0000, userAddress: Self.userBase, mmapOffset: 0)
        ])
        let remap = try message(.setMemTable, payload: table, fds: [memfd.release()])
        let mustWait = device.mustWaitForDrain(remap)
        #expect(mustWait, "guest memory could be unmapped under a chain in flight")
        let completed = device.complete(head: 0, writtenBytes: 1)
        #expect(completed)
    }

    /// Review finding: kick and call fds were adopted unchecked. A pipe as the call fd could
    /// block the daemon's one thread in write(); a dead pipe as the kick would keep epoll ready.
    @Test func kickAndCallMustBeCountingEventFDsAndBecomeNonBlocking() throws {
        var device = VhostUserDevice(configuration: Self.configuration)
        let call = try FileDescriptor.eventFD()
        try start(&device, call: call)
        var pipeFDs: [Int32] = [-1, -1]
        #expect(pipe(&pipeFDs) == 0)
        #expect(throws: VhostUserDeviceError.badEventFD(.setVringCall)) {
            _ = try device.handle(message(.setVringCall, payload: T.le(UInt64(0)), fds: [pipeFDs[1]]))
        }
        #expect(throws: VhostUserDeviceError.badEventFD(.setVringKick)) {
            _ = try device.handle(message(.setVringKick, payload: T.le(UInt64(0)), fds: [pipeFDs[0]]))
        }
        // No fd at all (VHOST_USER_VRING_NOFD_MASK): no polling mode here.
        #expect(throws: VhostUserDeviceError.badEventFD(.setVringKick)) {
            _ = try device.handle(message(.setVringKick, payload: T.le(UInt64(0x100))))
        }
        let semaphore = try FileDescriptor.eventFD(semaphore: true)
        #expect(throws: VhostUserDeviceError.badEventFD(.setVringCall)) {
            _ = try device.handle(
                message(.setVringCall, payload: T.le(UInt64(0)), fds: [semaphore.duplicate().release()]))
        }
        // A blocking eventfd is accepted and made non-blocking (the flag is on the shared file).
        let blocking = try FileDescriptor.eventFD()
        _ = fcntl(blocking.rawValue, F_SETFL, fcntl(blocking.rawValue, F_GETFL) & ~O_NONBLOCK)
        _ = try device.handle(message(.setVringCall, payload: T.le(UInt64(0)), fds: [blocking.duplicate().release()]))
        #expect(fcntl(blocking.rawValue, F_GETFL) & O_NONBLOCK != 0)
    }

    /// Review finding: a ring that was set up but not enabled reported its available entries to
    /// the final check although `pop` cannot take them: the loop spun.
    @Test func aDisabledRingReportsNothingToTake() throws {
        var device = VhostUserDevice(configuration: Self.configuration)
        let call = try FileDescriptor.eventFD()
        try start(&device, call: call)
        let mem = device.memory.translate(guestPhysical: Self.regionBase, length: 0x10_0000)!
        _ = try device.handle(message(.setVringEnable, payload: state(0, 0)))
        (mem + 0x1000).storeBytes(of: UInt16(1), toByteOffset: 2, as: UInt16.self)
        let iov = IovecStorage(Self.configuration.iovecCapacity)
        let popped = device.pop(into: iov.buffer).isEmpty
        let (more, available) = (device.enableNotifications(), device.hasAvailable)
        #expect(popped && !more && !available)
    }

    @Test func queueSizeMustBeAPowerOfTwo() throws {
        var device = VhostUserDevice(configuration: Self.configuration)
        #expect(throws: VhostUserDeviceError.queue(.badSize(3))) {
            _ = try device.handle(message(.setVringNum, payload: state(0, 3)))
        }
    }
}
