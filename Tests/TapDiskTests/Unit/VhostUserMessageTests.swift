import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// Message framing over a real SOCK_STREAM socketpair: what is accepted, what ends the
/// connection, and that fds of rejected messages are closed.
@Suite struct VhostUserMessageTests {
    typealias T = VhostUserTest

    /// Sends `bytes` and receives one message; `hangUp` closes the sending direction afterwards.
    private func receive(
        _ bytes: [UInt8], fds: [Int32] = [], hangUp: Bool = false
    ) throws -> Result<VhostUserRequest?, VhostUserError> {
        let pair = try T.socketPair()
        try T.send(bytes, fds: fds, on: pair.tx)
        if hangUp { shutdown(pair.tx.rawValue, Int32(SHUT_WR)) }
        do {
            guard let m = try VhostUserMessage.receive(from: pair.rx.rawValue) else { return .success(nil) }
            return .success(m.request)
        } catch {
            return .failure(error)
        }
    }

    @Test func acceptsGetFeaturesAndDecodesU64Payloads() throws {
        #expect(try receive(T.message(.getFeatures)) == .success(.getFeatures))
        let pair = try T.socketPair()
        try T.send(T.message(.setFeatures, payload: T.le(UInt64(0x1_7000_6e46))), on: pair.tx)
        let m = try T.next(pair.rx)
        #expect(try m.u64() == 0x1_7000_6e46)
        #expect(throws: VhostUserError.wrongPayloadKind(.setFeatures)) { try m.vringState() }
    }

    @Test func orderlyCloseBetweenMessagesIsNil() throws {
        let pair = try T.socketPair()
        let rx = try pair.rx.duplicate()
        _ = consume pair
        #expect(try VhostUserMessage.receive(from: rx.rawValue) == nil)
    }

    @Test func truncatedHeaderOrPayloadEndsTheConnection() throws {
        #expect(try receive(Array(T.message(.getFeatures).prefix(7)), hangUp: true) == .failure(.truncated))
        let setFeatures = T.message(.setFeatures, payload: T.le(UInt64(1)))
        #expect(try receive(Array(setFeatures.prefix(15)), hangUp: true) == .failure(.truncated))
        #expect(try receive(setFeatures, hangUp: true) == .success(.setFeatures))
    }

    @Test func oversizedPayloadIsRefusedBeforeItIsRead() throws {
        // Only the header is sent: a reader that tried to read 64 KiB would time out (EAGAIN).
        #expect(
            try receive(T.header(VhostUserRequest.setMemTable.rawValue, size: 0x10000))
                == .failure(.payloadTooLarge(request: 5, size: 0x10000)))
        #expect(
            try receive(T.header(VhostUserRequest.setConfig.rawValue, size: Int(UInt32.max)))
                == .failure(.payloadTooLarge(request: 25, size: UInt32.max)))
    }

    @Test func sizeMustMatchTheRequestType() throws {
        #expect(
            try receive(T.message(.getFeatures, payload: T.le(UInt64(0))))
                == .failure(.badPayloadSize(.getFeatures, size: 8)))
        #expect(
            try receive(T.message(.setVringAddr, payload: T.le(UInt64(0))))
                == .failure(.badPayloadSize(.setVringAddr, size: 8)))
        #expect(
            try receive(T.message(.setVringNum, payload: [1, 2, 3, 4]))
                == .failure(.badPayloadSize(.setVringNum, size: 4)))
        // GET_CONFIG's inner size must account for the rest of the payload, and stay ≤ 256.
        let config = T.le(UInt32(0)) + T.le(UInt32(60)) + T.le(UInt32(0))
        #expect(try receive(T.message(.getConfig, payload: config)) == .failure(.badConfigSize(60)))
        let big = T.le(UInt32(0)) + T.le(UInt32(257)) + T.le(UInt32(0)) + [UInt8](repeating: 0, count: 257)
        #expect(try receive(T.message(.getConfig, payload: big)) == .failure(.payloadTooLarge(request: 24, size: 269)))
    }

    @Test func headerFlagsAndRequestNumbersAreStrict() throws {
        #expect(try receive(T.message(.getFeatures, flags: 2)) == .failure(.badVersion(flags: 2)))
        #expect(try receive(T.message(.getFeatures, flags: 0)) == .failure(.badVersion(flags: 0)))
        #expect(try receive(T.message(.getFeatures, flags: 5)) == .failure(.unexpectedReply(request: 1)))
        #expect(try receive(T.header(999, size: 0)) == .failure(.unknownRequest(999)))
        #expect(try receive(T.header(0, size: 0)) == .failure(.unknownRequest(0)))
        // need-reply (0x8) is legal.
        #expect(try receive(T.message(.setOwner, flags: 9)) == .success(.setOwner))
    }

    @Test func memoryTableCarriesOneFDPerRegion() throws {
        let regions = [
            VhostUserMemoryRegion(guestPhysicalAddress: 0, size: 0xa0000, userAddress: 0x7f00_0000_0000, mmapOffset: 0),
            VhostUserMemoryRegion(
                guestPhysicalAddress: 0xc0000, size: 0x1ff4_0000, userAddress: 0x7f00_000c_0000, mmapOffset: 0xc0000),
        ]
        let a = try T.memfd(bytes: 4096)
        let b = try T.memfd(bytes: 4096)
        let pair = try T.socketPair()
        try T.send(
            T.message(.setMemTable, payload: T.memoryTablePayload(regions)), fds: [a.rawValue, b.rawValue], on: pair.tx)
        var m = try T.next(pair.rx)
        #expect(try m.memoryRegions() == regions)
        #expect(m.descriptors.count == 2)
        guard let taken = m.descriptors.take(1) else {
            Issue.record("fd 1 could not be taken")
            return
        }
        #expect(taken.rawValue >= 0)
        #expect(m.descriptors.peek(1) == nil && m.descriptors.peek(0) != nil)

        // One fd short, one too many, none: all refused.
        let payload = T.message(.setMemTable, payload: T.memoryTablePayload(regions))
        #expect(try receive(payload, fds: [a.rawValue]) == .failure(.badDescriptorCount(.setMemTable, count: 1)))
        #expect(
            try receive(payload, fds: [a.rawValue, b.rawValue, a.rawValue])
                == .failure(.badDescriptorCount(.setMemTable, count: 3)))
        #expect(try receive(payload) == .failure(.badDescriptorCount(.setMemTable, count: 0)))
    }

    @Test func memoryTableRegionCountIsBounded() throws {
        let r = VhostUserMemoryRegion(guestPhysicalAddress: 0, size: 4096, userAddress: 0, mmapOffset: 0)
        #expect(try receive(T.message(.setMemTable, payload: T.memoryTablePayload([]))) == .failure(.badRegionCount(0)))
        // nregions says 2 but one region follows.
        var lying = T.memoryTablePayload([r])
        lying[0] = 2
        #expect(try receive(T.message(.setMemTable, payload: lying)) == .failure(.badRegionCount(2)))
        // Nine regions exceed both the region bound and the payload bound.
        let nine = T.memoryTablePayload(Array(repeating: r, count: 9))
        #expect(
            try receive(T.message(.setMemTable, payload: nine)) == .failure(.payloadTooLarge(request: 5, size: 296)))
    }

    @Test func moreFDsThanAnyRequestTakesAreRefused() throws {
        let f = try T.memfd(bytes: 4096)
        let regions = Array(
            repeating: VhostUserMemoryRegion(guestPhysicalAddress: 0, size: 4096, userAddress: 0, mmapOffset: 0),
            count: 8)
        let nine = [Int32](repeating: f.rawValue, count: 9)
        #expect(
            try receive(T.message(.setMemTable, payload: T.memoryTablePayload(regions)), fds: nine)
                == .failure(.badDescriptorCount(.setMemTable, count: 9)))
    }

    @Test func vringFDsFollowTheNoFDBit() throws {
        let e = try FileDescriptor.eventFD()
        let withFD = T.message(.setVringKick, payload: T.le(UInt64(0)))
        let noFD = T.message(.setVringCall, payload: T.le(UInt64(0x100)))
        #expect(try receive(withFD, fds: [e.rawValue]) == .success(.setVringKick))
        #expect(try receive(withFD) == .failure(.badDescriptorCount(.setVringKick, count: 0)))
        #expect(try receive(noFD) == .success(.setVringCall))
        #expect(try receive(noFD, fds: [e.rawValue]) == .failure(.badDescriptorCount(.setVringCall, count: 1)))
        #expect(
            try receive(T.message(.getFeatures), fds: [e.rawValue])
                == .failure(.badDescriptorCount(.getFeatures, count: 1)))

        let pair = try T.socketPair()
        try T.send(T.message(.setVringErr, payload: T.le(UInt64(0x1_05))), on: pair.tx)
        let m = try T.next(pair.rx)
        #expect(try m.vringFile() == VhostUserVringFile(index: 5, hasDescriptor: false))
    }

    @Test func fdsRidingOnThePayloadAreRefused() throws {
        let e = try FileDescriptor.eventFD()
        let pair = try T.socketPair()
        try T.send(T.header(VhostUserRequest.setFeatures.rawValue, size: 8), on: pair.tx)
        try T.send(T.le(UInt64(1)), fds: [e.rawValue], on: pair.tx)
        #expect(throws: VhostUserError.badDescriptorCount(.setFeatures, count: 1)) {
            _ = try VhostUserMessage.receive(from: pair.rx.rawValue)
        }
    }

    @Test func rejectedMessagesCloseTheirFDs() throws {
        let e = try FileDescriptor.eventFD()
        let high = T.highDuplicate(e)
        #expect(T.isOpen(high))
        #expect(throws: VhostUserError.badDescriptorCount(.getFeatures, count: 1)) {
            _ = try VhostUserMessage(
                header: VhostUserHeader(request: 1, flags: 1, size: 0), payload: [],
                descriptors: ReceivedDescriptors(adopting: [high]))
        }
        #expect(!T.isOpen(high))
    }

    @Test func typedPayloadsDecodeLittleEndian() throws {
        let pair = try T.socketPair()
        let addr =
            T.le(UInt32(0)) + T.le(UInt32(1)) + T.le(UInt64(0x1000)) + T.le(UInt64(0x2000)) + T.le(UInt64(0x3000))
            + T.le(UInt64(0x4000))
        try T.send(T.message(.setVringAddr, payload: addr), on: pair.tx)
        try T.send(T.message(.getVringBase, payload: T.le(UInt32(0)) + T.le(UInt32(196))), on: pair.tx)
        let config = T.le(UInt32(8)) + T.le(UInt32(4)) + T.le(UInt32(1)) + [9, 8, 7, 6]
        try T.send(T.message(.setConfig, payload: config), on: pair.tx)
        let a = try T.next(pair.rx)
        #expect(
            try a.vringAddress()
                == VhostUserVringAddress(
                    index: 0, flags: 1, descriptorTable: 0x1000, usedRing: 0x2000, availableRing: 0x3000,
                    logGuestAddress: 0x4000))
        let b = try T.next(pair.rx)
        #expect(try b.vringState() == VhostUserVringState(index: 0, num: 196))
        let c = try T.next(pair.rx)
        #expect(try c.configAccess() == VhostUserConfigAccess(offset: 8, size: 4, flags: 1, bytes: [9, 8, 7, 6]))
    }

    @Test func repliesCarryTheReplyBitAndVersion() throws {
        #expect(
            VhostUserReply.u64(.getFeatures, 0x1_0000_0002) == [
                1, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0,
            ])
        #expect(
            VhostUserReply.ack(.setMemTable, success: false) == [
                5, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
            ])
        #expect(
            VhostUserReply.vringState(.getVringBase, VhostUserVringState(index: 0, num: 196))
                == [11, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 196, 0, 0, 0])
        let access = VhostUserConfigAccess(offset: 0, size: 2, flags: 0, bytes: [])
        #expect(
            VhostUserReply.config(access, window: [7, 8]) == [24, 0, 0, 0, 5, 0, 0, 0, 14, 0, 0, 0] + [
                0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, 8,
            ])

        // A reply sent on a real socket arrives whole (it is not a request: the reader refuses it).
        let pair = try T.socketPair()
        try VhostUserReply.send(VhostUserReply.u64(.getQueueNum, 1), on: pair.tx.rawValue)
        #expect(throws: VhostUserError.unexpectedReply(request: 17)) {
            _ = try VhostUserMessage.receive(from: pair.rx.rawValue)
        }
    }
}
