import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// Garbage on the vhost-user socket of the real daemon: every protocol violation closes the
/// connection, the daemon stays alive and answers its control socket, keeps no fd of the
/// dead connection, returns to idle and serves the next front-end correctly.
@Suite(.serialized, .timeLimit(.minutes(2))) struct VhostUserDaemonProtocolTests {
    typealias Ring = VhostUserTestRing
    typealias Frontend = VhostUserTestFrontend
    typealias T = VhostUserTest

    /// One violation: how far the connection was set up first, then what is sent.
    struct Garbage: CustomStringConvertible, Sendable {
        enum Stage: Sendable { case connected, negotiated, memory }
        var description: String
        var stage = Stage.negotiated
        var send: @Sendable (Frontend) throws -> Void
    }

    static func region(gpa: UInt64 = Ring.base, size: UInt64 = Ring.bytes) -> VhostUserMemoryRegion {
        VhostUserMemoryRegion(guestPhysicalAddress: gpa, size: size, userAddress: Ring.userBase, mmapOffset: 0)
    }

    static func memfds(_ n: Int, bytes: Int = Int(Ring.bytes)) throws -> RawFDs {
        RawFDs(try (0..<n).map { _ in try T.memfd(bytes: bytes).release() })
    }

    static func ringThenKick(_ f: Frontend, num: UInt32 = 128, address: VhostUserVringAddress? = nil) throws {
        try f.send(.setVringNum, payload: Frontend.state(num))
        try f.send(.setVringAddr, payload: Frontend.address(address ?? f.ring.addresses))
        try f.send(.setVringKick, payload: T.le(UInt64(0)), fds: [f.kickFD.rawValue])
    }

    static let cases: [Garbage] = [
        Garbage(description: "version 2 in the header", stage: .connected) { f in
            try f.sendRaw(T.header(VhostUserRequest.getFeatures.rawValue, flags: 2, size: 0))
        },
        Garbage(description: "the reply bit from the front-end") { f in
            try f.sendRaw(T.header(VhostUserRequest.getFeatures.rawValue, flags: 5, size: 0))
        },
        Garbage(description: "unknown request 0xdead") { f in try f.send(0xdead) },
        Garbage(description: "request 0", stage: .connected) { f in try f.send(0) },
        Garbage(description: "a 4096-byte payload") { f in
            try f.send(.setFeatures, payload: [UInt8](repeating: 0, count: 4096))
        },
        Garbage(description: "SET_FEATURES with 4 bytes") { f in try f.send(.setFeatures, payload: [0, 0, 0, 1]) },
        Garbage(description: "GET_FEATURES with a payload") { f in try f.send(.getFeatures, payload: T.le(UInt64(1))) },
        Garbage(description: "half a header, then EOF", stage: .connected) { f in
            try f.sendRaw(Array(T.header(VhostUserRequest.getFeatures.rawValue, size: 0).prefix(6)))
            f.shutdownWrite()
        },
        Garbage(description: "SET_VRING_ADDR cut after 10 payload bytes, then EOF", stage: .memory) { f in
            try f.sendRaw(Array(T.message(.setVringAddr, payload: Frontend.address(f.ring.addresses)).prefix(22)))
            f.shutdownWrite()
        },
        Garbage(description: "SET_MEM_TABLE with 0 regions") { f in
            try f.send(.setMemTable, payload: T.le(UInt32(0)) + T.le(UInt32(0)), fds: [f.memfd.rawValue])
        },
        Garbage(description: "SET_MEM_TABLE with 9 regions and 9 fds") { f in
            let fds = try memfds(9)
            let regions = (0..<9).map { region(gpa: Ring.base + UInt64($0) * Ring.bytes) }
            try f.send(.setMemTable, payload: T.memoryTablePayload(regions), fds: fds.fds)
        },
        Garbage(description: "SET_MEM_TABLE, 2 regions, 1 fd") { f in
            let regions = [region(), region(gpa: Ring.base + Ring.bytes)]
            try f.send(.setMemTable, payload: T.memoryTablePayload(regions), fds: [f.memfd.rawValue])
        },
        Garbage(description: "SET_MEM_TABLE, 1 region, 2 fds") { f in
            try f.send(
                .setMemTable, payload: T.memoryTablePayload([region()]), fds: [f.memfd.rawValue, f.memfd.rawValue])
        },
        Garbage(description: "SET_MEM_TABLE without its fd") { f in
            try f.send(.setMemTable, payload: T.memoryTablePayload([region()]))
        },
        Garbage(description: "SET_MEM_TABLE, 16 fds") { f in
            let fds = try memfds(16, bytes: 4096)
            try f.send(.setMemTable, payload: T.memoryTablePayload([region()]), fds: fds.fds)
        },
        Garbage(description: "SET_MEM_TABLE region larger than its memfd") { f in
            let small = try memfds(1, bytes: 4096)
            try f.send(.setMemTable, payload: T.memoryTablePayload([region()]), fds: small.fds)
        },
        Garbage(description: "SET_MEM_TABLE with overlapping regions") { f in
            let fds = try memfds(2)
            try f.send(.setMemTable, payload: T.memoryTablePayload([region(), region()]), fds: fds.fds)
        },
        Garbage(description: "SET_MEM_TABLE region wrapping 2^64") { f in
            try f.send(
                .setMemTable, payload: T.memoryTablePayload([region(gpa: UInt64.max - 4095)]), fds: [f.memfd.rawValue])
        },
        Garbage(description: "SET_FEATURES with unoffered bits") { f in
            try f.send(.setFeatures, payload: T.le(f.features | 1 << 27 | 1 << 63))
        },
        Garbage(description: "SET_PROTOCOL_FEATURES with MQ and INFLIGHT") { f in
            try f.send(.setProtocolFeatures, payload: T.le(UInt64(1 | 1 << 12)))
        },
        Garbage(description: "SET_VRING_KICK for queue 1", stage: .memory) { f in
            try f.send(.setVringKick, payload: T.le(UInt64(1)), fds: [f.kickFD.rawValue])
        },
        Garbage(description: "SET_VRING_CALL claiming an fd without one") { f in
            try f.send(.setVringCall, payload: T.le(UInt64(0)))
        },
        Garbage(description: "SET_VRING_BASE 0x10000") { f in
            try f.send(.setVringBase, payload: Frontend.state(0x1_0000))
        },
        Garbage(description: "a ring of 3 entries", stage: .memory) { f in try ringThenKick(f, num: 3) },
        Garbage(description: "a ring of 2^20 entries", stage: .memory) { f in try ringThenKick(f, num: 1 << 20) },
        Garbage(description: "ring addresses outside memory", stage: .memory) { f in
            var a = f.ring.addresses
            a.usedRing = 0x1000
            try ringThenKick(f, address: a)
        },
        Garbage(description: "misaligned descriptor table", stage: .memory) { f in
            var a = f.ring.addresses
            a.descriptorTable += 8
            try ringThenKick(f, address: a)
        },
        Garbage(description: "ring start before the memory table") { f in try ringThenKick(f) },
        Garbage(description: "an fd riding on GET_FEATURES") { f in try f.send(.getFeatures, fds: [f.memfd.rawValue]) },
        Garbage(description: "SET_LOG_BASE (never negotiated)") { f in
            try f.send(.setLogBase, payload: T.le(UInt64(0)) + T.le(UInt64(0)), fds: [f.memfd.rawValue])
        },
        Garbage(description: "GET_CONFIG of 257 bytes") { f in
            try f.send(
                .getConfig,
                payload: T.le(UInt32(0)) + T.le(UInt32(257)) + T.le(UInt32(0)) + [UInt8](repeating: 0, count: 257))
        },
        Garbage(description: "256 random bytes", stage: .connected) { f in
            var rng = SplitMix(seed: 0x5eed)
            try f.sendRaw((0..<256).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
        },
    ]

    // 8. Each violation closes the connection; the daemon recovers and leaks nothing.
    @Test(arguments: cases) func violationClosesTheConnection(garbage: Garbage) throws {
        let daemon = try VhostUserTestDaemon()
        let baseline = daemon.baselineFDCount()
        let f = try daemon.frontend()
        switch garbage.stage {
        case .connected: break
        case .negotiated: try f.negotiate()
        case .memory:
            try f.negotiate()
            try f.setUpMemory()
        }
        do {
            try garbage.send(f)
        } catch let e as Errno where e.rawValue == EPIPE || e.rawValue == ECONNRESET {
            // The daemon refused an earlier message of the violation and closed the connection
            // before the rest was sent: the outcome this test wants, reached sooner.
        }
        #expect(f.closedByPeer(within: 5), "the connection stayed open; state \(daemon.state() ?? "no answer")")
        #expect(daemon.isAlive, "\(daemon.log.suffix(2000))")
        f.disconnect()
        daemon.expectRecovery("after \(garbage)")
        daemon.expectNoLeakedFDs(baseline: baseline)
    }

    // A front-end that stops halfway through a message must not stall the daemon: the control
    // socket still answers while it stalls, and the daemon recovers once it goes.
    @Test func stalledMessageDoesNotBlockTheDaemon() throws {
        let daemon = try VhostUserTestDaemon()
        let f = try daemon.frontend()
        try f.negotiate()
        try f.sendRaw(Array(T.message(.setVringAddr, payload: Frontend.address(f.ring.addresses)).prefix(20)))
        // The daemon is inside the message (waiting for the rest of its payload) before `status`.
        #expect(DaemonTest.waitUntil(seconds: 5) { DaemonTest.isInsidePoll(pid: daemon.pid) }, "not reading it")
        let start = MonotonicClock.nanoseconds()
        let state = daemon.state()
        let seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
        // The daemon gives a stalled message 1 s (docs/vhost-user.md, `Daemon+VhostUser`: the
        // connection's 1 s send and receive timeouts and 1 s per message), then drops the front-end.
        #expect(state != nil && seconds < 2, "status took \(seconds) s (\(state ?? "no answer")) during the stall")
        #expect(f.closedByPeer(within: 3), "the daemon kept a front-end that stalled mid-message")
        f.disconnect()
        daemon.expectRecovery("after the stall")
    }

    // A front-end that drips a message one byte at a time, each byte inside the 1 s socket
    // timeout, must not hold the daemon either: the socket timeout bounds one recv, not the
    // message, so the control socket is the witness.
    @Test func drippedMessageDoesNotBlockTheDaemon() throws {
        let daemon = try VhostUserTestDaemon()
        let f = try daemon.frontend()
        try f.negotiate()
        let message = T.message(.setVringAddr, payload: Frontend.address(f.ring.addresses))
        let fd = f.socket
        let done = DispatchSemaphore(value: 0)
        // 20 bytes, one per 300 ms: 6 s of drip, then the thread stops sending.
        let drip = Thread {
            for b in message.prefix(20) {
                var byte = b
                _ = Glibc.send(fd, &byte, 1, Int32(MSG_NOSIGNAL))
                usleep(300_000)
            }
            done.signal()
        }
        drip.start()
        // The daemon is inside the message (it has its first byte and polls for the rest).
        #expect(DaemonTest.waitUntil(seconds: 5) { DaemonTest.isInsidePoll(pid: daemon.pid) }, "not reading it")
        let start = MonotonicClock.nanoseconds()
        let state = daemon.state()
        let seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
        // The whole message must arrive within 1 s of its first byte: the drip is cut off there.
        #expect(state != nil && seconds < 2, "status took \(seconds) s (\(state ?? "no answer")) during the drip")
        #expect(f.closedByPeer(within: 3), "the daemon kept a front-end that dripped a message")
        #expect(done.wait(timeout: .now() + 15) == .success)
        f.disconnect()
        daemon.expectRecovery("after the drip")
    }

    // A refused need-reply message (a memfd too short) is answered with a failing ack, or the
    // connection is closed; if it stays open, a correct table afterwards works.
    @Test func refusedNeedReplyMessage() throws {
        let daemon = try VhostUserTestDaemon()
        let f = try daemon.frontend()
        try f.negotiate()
        try #require(f.replyAck, "REPLY_ACK not offered")
        let small = try Self.memfds(1, bytes: 4096)
        try f.send(.setMemTable, flags: 0x9, payload: T.memoryTablePayload([Self.region()]), fds: small.fds)
        do {
            let ack = try f.reply(to: .setMemTable)
            #expect(ack.count == 8 && Frontend.u64(ack, 0) != 0, "a bad memory table was acked: \(ack)")
            try f.setUpMemory()
            try f.setUpRing()
            VhostUserTestDaemon.expectServes(f, "after a refused table")
        } catch is Frontend.Closed {
            print("vhost-user refused SET_MEM_TABLE: the daemon closed the connection")
        }
        f.disconnect()
        daemon.expectRecovery("after a refused table")
    }

    // One connection at a time: a second front-end waits (or is turned away) without disturbing
    // the first, and is served once the first has gone.
    @Test func secondFrontendWhileOneIsServed() throws {
        let daemon = try VhostUserTestDaemon()
        let first = try daemon.started()
        let second = try daemon.frontend()
        try second.send(.getFeatures)
        VhostUserTestDaemon.expectServes(first, "the first front-end while a second waits")
        first.disconnect()
        // The second either gets its answer now (it was queued, and is accepted as soon as the
        // first has drained) or was closed.
        do {
            let p = try second.reply(to: .getFeatures)
            #expect(p.count == 8)
            try second.negotiate()
            try second.setUpMemory()
            try second.setUpRing()
            VhostUserTestDaemon.expectServes(second, "the second front-end")
        } catch is Frontend.Closed {
            print("vhost-user: a second front-end was turned away while the first was served")
            daemon.expectRecovery("after the second front-end was turned away")
        }
        second.disconnect()
        daemon.expectRecovery("after two front-ends")
    }
}
