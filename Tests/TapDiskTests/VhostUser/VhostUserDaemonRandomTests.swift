import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// Random descriptor tables posted to the real daemon, the libFuzzer-free way: every published
/// head gets exactly one used entry, or (a head outside the queue) the ring is declared broken
/// with a `frontend-violation` and the front-end reconnects; the daemon never dies, returns to
/// idle and serves a clean front-end at the end. Replays exactly from its seed.
@Suite(.serialized, .timeLimit(.minutes(3))) struct VhostUserDaemonRandomTests {
    typealias Ring = VhostUserTestRing
    typealias Frontend = VhostUserTestFrontend
    static let queueSize = 16

    /// Far from the patterned first MiB (so random writes cannot spoil it) or past the end.
    private static func sector(_ rng: inout SplitMix) -> UInt64 {
        rng.next() % 2 == 0 ? 2048 + rng.next() % 28_000 : rng.next()
    }

    /// Every descriptor and indirect entry random, header at data(0) random.
    static func randomTable(_ f: Frontend, _ rng: inout SplitMix) {
        for i in 0..<queueSize {
            f.ring.setDescriptor(
                i, address: Ring.hostileAddress(&rng), length: Ring.hostileLength(&rng), flags: UInt16(rng.next() % 8),
                next: UInt16(rng.next() % UInt64(queueSize + 2)))
        }
        for i in 0..<8 {
            f.ring.setDescriptor(
                i, address: Ring.hostileAddress(&rng), length: Ring.hostileLength(&rng), flags: UInt16(rng.next() % 8),
                next: UInt16(rng.next() % 10), table: Ring.indirect(0))
        }
        f.ring.writeHeader(at: Ring.data(0), type: UInt32(rng.next() % 16), sector: sector(&rng))
    }

    /// A valid request at descriptors 0...2 (or through an indirect table) with one field
    /// changed at random; returns whether it was left valid.
    static func mutatedRequest(_ f: Frontend, _ rng: inout SplitMix) -> Bool {
        let type = [VirtioBlkType.read, VirtioBlkType.write, VirtioBlkType.flush][Int(rng.next() % 3)]
        let bytes = UInt32(512 * (1 + rng.next() % 16))
        f.prepare(
            first: 0, type: type, sector: 2048 + rng.next() % 28_000, bytes: bytes,
            dataOffset: 0x1000 * (rng.next() % 64))
        if type == VirtioBlkType.flush {
            f.ring.setDescriptor(0, address: Frontend.headerAddress(0), length: 16, flags: Ring.N, next: 2)
        }
        var table = Ring.base + Ring.descOffset
        if rng.next() % 4 == 0 {
            // The same chain through an indirect table.
            table = Ring.indirect(0x1000)
            for i in 0..<3 {
                let d = f.ring.host(Ring.base + Ring.descOffset + UInt64(16 * i))
                f.ring.host(table + UInt64(16 * i)).copyMemory(from: d, byteCount: 16)
            }
            f.ring.setDescriptor(0, address: table, length: 48, flags: Ring.I)
        }
        let d = Int(rng.next() % 3)
        let entry = f.ring.host(table + UInt64(16 * d))
        switch rng.next() % 9 {
        case 0: entry.storeBytes(of: Ring.hostileLength(&rng).littleEndian, toByteOffset: 8, as: UInt32.self)
        case 1: entry.storeBytes(of: Ring.hostileAddress(&rng).littleEndian, toByteOffset: 0, as: UInt64.self)
        case 2: entry.storeBytes(of: UInt16(rng.next() % 8).littleEndian, toByteOffset: 12, as: UInt16.self)
        case 3: entry.storeBytes(of: UInt16(rng.next() % 18).littleEndian, toByteOffset: 14, as: UInt16.self)
        case 4: f.ring.writeHeader(at: Frontend.headerAddress(0), type: UInt32(rng.next() % 16), sector: 2048)
        case 5:
            f.ring.writeHeader(at: Frontend.headerAddress(0), type: type, sector: f.capacitySectors - rng.next() % 16)
        case 6: f.ring.writeHeader(at: Frontend.headerAddress(0), type: type, sector: rng.next())
        case 7: entry.storeBytes(of: UInt32(rng.next() % 32).littleEndian, toByteOffset: 8, as: UInt32.self)
        default: return true
        }
        return false
    }

    @Test(arguments: [0x7a9d_1001, 0x7a9d_1002] as [UInt64]) func randomChains(seed: UInt64) throws {
        let daemon = try VhostUserTestDaemon()
        let events = try daemon.subscribe()
        let baseline = daemon.baselineFDCount(liveConnections: 1)
        var rng = SplitMix(seed: seed)
        var f = try daemon.started(queueSize: Self.queueSize)
        var counts: [String: Int] = [:]
        var broken = 0
        var answered = 0
        for iteration in 0..<1500 {
            let mutated = rng.next() % 2 == 0
            var valid = false
            var head: UInt16 = 0
            if mutated {
                valid = Self.mutatedRequest(f, &rng)
            } else {
                Self.randomTable(f, &rng)
                head =
                    rng.next() % 64 == 0 ? UInt16(Self.queueSize) + UInt16(rng.next() % 1000) : UInt16(rng.next() % 16)
            }
            let before = f.used.count
            f.publish(head)
            if Int(head) >= Self.queueSize {
                broken += 1
                #expect(daemon.violationReported(on: events), "iteration \(iteration): head \(head) not reported")
                #expect(f.usedOnceSettled(daemon.process) == 0, "iteration \(iteration): head \(head) answered")
                #expect(f.overAnswered.isEmpty)
                f.disconnect()
                guard daemon.waitForState("idle") else {
                    Issue.record(
                        "iteration \(iteration): not idle after a broken ring: \(daemon.state() ?? "no answer")")
                    break
                }
                f = try daemon.started(queueSize: Self.queueSize)
                continue
            }
            guard f.waitForUsed(total: before + 1) else {
                Issue.record(
                    "iteration \(iteration) (\(mutated ? "mutated" : "random")): no used entry for head \(head); alive \(daemon.isAlive), state \(daemon.state() ?? "no answer")"
                )
                break
            }
            answered += 1
            let e = f.used[before]
            #expect(e.id == UInt32(head), "iteration \(iteration): used id \(e.id) for head \(head)")
            if mutated {
                let s = f.status(0)
                counts[s == Frontend.sentinel ? "untouched" : "status \(s)", default: 0] += 1
                if valid {
                    #expect(s == VirtioBlkStatus.ok.rawValue, "iteration \(iteration): a valid request got \(s)")
                }
                // An untouched status byte says nothing about the length: a mutation may have moved
                // the chain's last writable byte elsewhere.
            } else {
                counts["random, length \(e.length == 0 ? "0" : e.length == 1 ? "1" : ">1")", default: 0] += 1
            }
        }
        #expect(f.usedOnceSettled(daemon.process) == 0, "used entries nobody asked for")
        #expect(f.overAnswered.isEmpty, "heads answered twice: \(f.overAnswered)")
        // Extra events are only reported: a violation for a valid head would already have shown
        // as a missing used entry.
        let extra = try DaemonTest.eventsBeforeReply(events).filter { $0["event"]?.stringValue == "frontend-violation" }
        print(
            "vhost-user random seed \(seed): answered \(answered), broken \(broken), further violation events \(extra.count), \(counts.sorted { $0.key < $1.key })"
        )
        #expect(answered > 1300 && daemon.isAlive)
        VhostUserTestDaemon.expectServes(f, "after the random chains", seed: 4, patternIntact: false)
        f.disconnect()
        daemon.expectRecovery("after the random chains", patternIntact: false)
        daemon.expectNoLeakedFDs(baseline: baseline)
    }
}
