import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// A hostile vhost-user-blk front-end against the real `tapdiskd --vhost-user-blk` process:
/// malformed chains are answered once and never with OK, a broken ring stops and is reported,
/// and whatever the front-end did, the daemon stays alive, returns to idle after the disconnect
/// and serves the next front-end correctly. Every case first proves the front-end is served
/// (else a refusal would prove nothing).
@Suite(.serialized, .timeLimit(.minutes(2))) struct VhostUserDaemonHostileTests {
    typealias Ring = VhostUserTestRing
    typealias Frontend = VhostUserTestFrontend
    static let ioError = VirtioBlkStatus.ioError.rawValue
    static let unsupported = VirtioBlkStatus.unsupported.rawValue

    /// Sends each chain on one connection and expects exactly one used entry for its head:
    /// IOERR in the status byte, or (when the walk cannot know the status byte) the byte left
    /// alone and length 0. A daemon that closes the connection instead is accepted for chains
    /// listed in `disconnectAllowed`, and must then recover.
    private func expectRefusals(_ chains: [MalformedChain], disconnectAllowed: Bool = false) throws {
        let daemon = try VhostUserTestDaemon()
        var f = try daemon.started()
        try #require(VhostUserTestDaemon.expectServes(f, "before the malformed chains"))
        var outcomes: [String] = []
        for (i, chain) in chains.enumerated() {
            let first = 16 + (i * 8) % 96
            let status = chain.build(f, first)
            f.setStatus(at: status, Frontend.sentinel)
            let before = f.used.count
            f.publish(UInt16(first))
            if f.waitForUsed(total: before + 1) {
                let e = f.used[before]
                let s = f.status(at: status)
                outcomes.append("\(chain): status \(s) length \(e.length)")
                #expect(e.id == UInt32(first), "\(chain): used id \(e.id), head \(first)")
                if chain.statusKnown {
                    #expect(s == Self.ioError, "\(chain): status \(s)")
                } else {
                    #expect(
                        (s == Self.ioError && e.length <= 1) || (s == Frontend.sentinel && e.length == 0),
                        "\(chain): status \(s) length \(e.length)")
                }
            } else if disconnectAllowed && f.closedByPeer(within: 1) {
                outcomes.append("\(chain): disconnected")
                daemon.expectRecovery("after \(chain)")
                f = try daemon.started()
            } else {
                Issue.record("\(chain): no used entry, no disconnect; daemon state \(daemon.state() ?? "no answer")")
                break
            }
            #expect(daemon.process.process.isRunning, "\(chain): the daemon died")
        }
        #expect(f.usedOnceSettled(daemon.process) == 0, "a used entry nobody asked for")
        #expect(f.overAnswered.isEmpty, "heads answered twice: \(f.overAnswered)")
        #expect(daemon.isAlive)
        print("vhost-user hostile chains:\n  " + outcomes.joined(separator: "\n  "))
        VhostUserTestDaemon.expectServes(f, "after the malformed chains", seed: 2)
        f.disconnect()
        daemon.expectRecovery("after the malformed chains")
    }

    // 1. A descriptor loop: a refusal or a clean disconnect, never a crash or a hang.
    @Test func descriptorLoops() throws {
        try expectRefusals(MalformedChain.loops, disconnectAllowed: true)
    }

    // 2. Buffers outside every region.
    @Test func addressesOutsideGuestMemory() throws {
        try expectRefusals(MalformedChain.outsideMemory)
    }

    // 3. Too many bytes, too many segments.
    @Test func oversizedChains() throws {
        let probe = try VhostUserTestDaemon()
        let f = try probe.started()
        let (segMax, sizeMax) = (Int(f.segMax), Int(f.sizeMax))
        f.disconnect()
        try #require(segMax > 0 && segMax < 400 && sizeMax >= 4096, "seg_max \(segMax) size_max \(sizeMax)")
        try expectRefusals(MalformedChain.oversized(segMax: segMax, sizeMax: sizeMax))
    }

    // 4. Indirect tables in the wrong place or of the wrong size.
    @Test func indirectMisuse() throws {
        try expectRefusals(MalformedChain.indirectMisuse)
    }

    @Test func malformedShapes() throws {
        try expectRefusals(MalformedChain.shapes)
    }

    // 7. The sanity the negative cases rest on, plus the answers owed without I/O.
    @Test func validRequestsUnknownTypesAndCapacity() throws {
        let daemon = try VhostUserTestDaemon()
        let f = try daemon.started()
        VhostUserTestDaemon.expectServes(f, "first requests")
        #expect(f.capacitySectors == UInt64(VhostUserTestDaemon.imageBytes / 512))
        // The host sees the write of expectServes.
        let written = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
        #expect(daemon.imageBytes(sector: 100, count: 4096) == written)
        // A 64 KiB READ across many patterned sectors (clear of sector 100, written above).
        let big = f.read(sector: 200, bytes: 65536, first: 9, dataOffset: 0x1_0000)
        #expect(
            big?.0 == VirtioBlkStatus.ok.rawValue && big?.1 == VhostUserTestDaemon.pattern(sector: 200, bytes: 65536))

        for type: UInt32 in [2, 3, 0x42, 0xffff_ffff] {
            f.prepare(first: 12, type: type)
            let r = f.submit(first: 12)
            #expect(r?.status == Self.unsupported, "type \(type): \(String(describing: r))")
        }
        let capacity = f.capacitySectors
        for (sector, bytes) in [(capacity - 4, 4096), (capacity, 512), (capacity + 8, 4096), (UInt64.max - 3, 4096)] {
            f.prepare(first: 15, type: VirtioBlkType.read, sector: sector, bytes: UInt32(bytes))
            let r = f.submit(first: 15)
            #expect(r?.status == Self.ioError, "READ at \(sector) of \(bytes): \(String(describing: r))")
        }
        f.prepare(first: 15, type: VirtioBlkType.write, sector: capacity - 1, bytes: 4096)
        #expect(f.submit(first: 15)?.status == Self.ioError, "WRITE past the end")
        f.prepare(first: 15, type: VirtioBlkType.read, sector: 1, bytes: 1000)
        #expect(f.submit(first: 15)?.status == Self.ioError, "READ of 1000 bytes")
        // READ whose data the device would have to read (wrong direction).
        f.prepare(first: 15, type: VirtioBlkType.read, sector: 0, bytes: 4096)
        f.ring.setDescriptor(16, address: Ring.data(0), length: 4096, flags: Ring.N, next: 17)
        #expect(f.submit(first: 15)?.status == Self.ioError, "READ with device-readable data")
        // FLUSH: header + status only.
        let h = MalformedChain.header(f, 20, type: VirtioBlkType.flush)
        f.ring.setDescriptor(20, address: h, length: 16, flags: Ring.N, next: 21)
        f.ring.setDescriptor(21, address: Frontend.statusAddress(20), length: 1, flags: Ring.W)
        f.setStatus(at: Frontend.statusAddress(20), Frontend.sentinel)
        #expect(f.submit(first: 20)?.status == VirtioBlkStatus.ok.rawValue, "FLUSH")
        // GET_ID answers the serial.
        f.prepare(first: 24, type: VirtioBlkType.getID, bytes: 20, dataOffset: 0x3_0000)
        let id = f.submit(first: 24)
        #expect(id?.status == VirtioBlkStatus.ok.rawValue)
        let serial = f.bytes(at: Ring.data(0x3_0000), count: 20).prefix { $0 != 0 && $0 != 0xA5 }
        #expect(String(decoding: serial, as: UTF8.self) == "tapdiskd", "GET_ID serial, length \(id?.length ?? 0)")
        #expect(f.overAnswered.isEmpty && f.usedOnceSettled(daemon.process) == 0)
        VhostUserTestDaemon.expectServes(f, "after the refusals", seed: 3)
        #expect(daemon.isAlive)
        f.disconnect()
        daemon.expectRecovery("after the sanity case")
    }

    /// The outcome of one READ and one WRITE whose guest buffers are 256-byte aligned.
    enum UnalignedPolicy: String, CaseIterable, CustomStringConvertible {
        case report = "--on-error report"
        case pause = "--on-error pause"
        var description: String { rawValue }
    }

    // Buffer alignment is the guest's choice (virtio sets no rule; QEMU bounces): a buffer
    // O_DIRECT cannot take is answered (OK with the right bytes, or IOERR) but is not an I/O
    // error of the image — no io-error event, io-status stays ok, and never a pause the guest
    // can trigger at will.
    @Test(arguments: UnalignedPolicy.allCases) func unalignedGuestBuffer(policy: UnalignedPolicy) throws {
        let daemon = try VhostUserTestDaemon(arguments: policy.rawValue.split(separator: " ").map(String.init))
        let events = try daemon.subscribe()
        let f = try daemon.started()
        VhostUserTestDaemon.expectServes(f, "before the unaligned buffers")
        let read = f.read(sector: 8, bytes: 4096, first: 9, dataOffset: 0x100)
        let data = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 5) }
        let write = f.write(sector: 300, data, first: 12, dataOffset: 0x2100)
        let seen = try DaemonTest.eventsBeforeReply(events)
        let ioErrors = seen.filter { $0["event"]?.stringValue == "io-error" }.map { JSONWriter.string(.object($0)) }
        let status = try daemon.process.client().call("status")
        let summary =
            "read \(read.map { "\($0.0)" } ?? "no answer"), write \(write.map(String.init) ?? "no answer"), state \(status["state"]?.stringValue ?? "?"), io-status \(status["io-status"]?.stringValue ?? "?"), io-error events \(ioErrors)"
        print("vhost-user unaligned buffers, \(policy): \(summary)")
        // Bounced through an aligned buffer (Engine+Bounce.swift): OK, with the right bytes.
        #expect(read?.0 == VirtioBlkStatus.ok.rawValue && write == VirtioBlkStatus.ok.rawValue, "\(summary)")
        #expect(read?.1 == VhostUserTestDaemon.pattern(sector: 8, bytes: 4096))
        #expect(daemon.imageBytes(sector: 300, count: 4096) == data)
        #expect(ioErrors.isEmpty && status["io-status"]?.stringValue == "ok", "\(summary)")
        #expect(status["state"]?.stringValue == "running", "\(summary)")
        #expect(daemon.isAlive)
        f.disconnect()
        daemon.expectRecovery("after unaligned buffers")
    }

    // The bounce path goes through the same fault seam as AIO completions: an injected EIO on a
    // bounced READ is answered IOERR (and raised as an io-error), an injected short completion
    // on a bounced WRITE is resumed for the rest and answered OK with every byte on disk.
    @Test func bouncedRequestsMeetInjectedFaults() throws {
        let daemon = try VhostUserTestDaemon(environment: ["TAPDISK_FAULTS": "read:EIO:1,write:short:1"])
        let f = try daemon.started()
        let read = f.read(sector: 8, bytes: 4096, first: 9, dataOffset: 0x100)
        #expect(read?.0 == Self.ioError, "bounced READ under an injected EIO: \(read.map { "\($0.0)" } ?? "no answer")")
        let data = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 11 &+ 1) }
        let write = f.write(sector: 4096, data, first: 12, dataOffset: 0x2100)
        #expect(write == VirtioBlkStatus.ok.rawValue)
        #expect(daemon.imageBytes(sector: 4096, count: 8192) == data)
        let counters = try DaemonTest.stats(daemon.process.client())
        #expect(counters["read-errors"] == 1 && counters["short-completions"] == 1, "\(counters.values)")
        f.disconnect()
        daemon.expectRecovery("after faults on bounced requests")
    }

    // A guest that sends nothing but misaligned buffers: 40 bounced WRITEs of 256 KiB (10 MiB, after the pattern,
    // past the 8 MiB a service round may bounce before the loop gets its turn) are all answered,
    // once each, with their data on disk.
    @Test func manyBouncedWritesAreAllAnswered() throws {
        let daemon = try VhostUserTestDaemon()
        let f = try daemon.started()
        let data = (0..<0x40000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        f.fill(at: Ring.data(1), with: data)
        let heads = (0..<40).map { UInt16(3 * $0) }
        for (i, h) in heads.enumerated() {
            f.prepare(
                first: Int(h), type: VirtioBlkType.write, sector: 4096 + UInt64(i) * 512, bytes: 0x40000, dataOffset: 1)
        }
        let start = f.used.count
        f.publish(heads)
        #expect(f.waitForUsed(total: start + heads.count, seconds: 30), "\(f.used.count - start) of 40 answered")
        #expect(f.usedOnceSettled(daemon.process) == 0 && f.overAnswered.isEmpty, "\(f.overAnswered)")
        for h in heads { #expect(f.status(Int(h)) == VirtioBlkStatus.ok.rawValue, "head \(h)") }
        #expect(daemon.imageBytes(sector: 4096 + 39 * 512, count: 0x40000) == data)
        #expect(daemon.state() == "running")
        f.disconnect()
        daemon.expectRecovery("after 40 bounced writes")
    }

    // More data segments than seg_max (but inside what the daemon can hold): an answer either
    // way — OK with the right data, or IOERR — and exactly one.
    @Test func oneSegmentOverSegMax() throws {
        let daemon = try VhostUserTestDaemon()
        let f = try daemon.started()
        let segments = Int(f.segMax) + 1
        let t = MalformedChain.table(30)
        f.ring.setDescriptor(30, address: t, length: UInt32(16 * (segments + 2)), flags: Ring.I)
        f.ring.setDescriptor(
            0, address: MalformedChain.header(f, 30, sector: 16), length: 16, flags: Ring.N, next: 1, table: t)
        for i in 1...segments {
            f.ring.setDescriptor(
                i, address: Ring.data(UInt64(i) * 512), length: 512, flags: Ring.N | Ring.W, next: UInt16(i + 1),
                table: t)
        }
        f.ring.setDescriptor(segments + 1, address: Frontend.statusAddress(30), length: 1, flags: Ring.W, table: t)
        f.setStatus(at: Frontend.statusAddress(30), Frontend.sentinel)
        let r = try #require(f.submit(first: 30), "no answer to seg_max + 1 segments")
        let data = f.bytes(at: Ring.data(512), count: 512 * segments)
        print("vhost-user seg_max \(f.segMax) + 1 segments: status \(r.status) length \(r.length)")
        if r.status == VirtioBlkStatus.ok.rawValue {
            #expect(data == VhostUserTestDaemon.pattern(sector: 16, bytes: 512 * segments))
        } else {
            #expect(r.status == Self.ioError)
        }
        #expect(f.usedOnceSettled(daemon.process) == 0)
        f.disconnect()
        daemon.expectRecovery("after seg_max + 1")
    }
}
