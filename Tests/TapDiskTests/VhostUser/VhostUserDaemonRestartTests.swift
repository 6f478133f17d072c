import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The daemon killed with a request held while later ones completed, and a new daemon taking
/// over the same guest through INFLIGHT_SHMFD: the bad case of a restart, where restarting the
/// queue from used->idx would answer a completed head twice and never answer the held one.
@Suite(.serialized, .timeLimit(.minutes(5))) struct VhostUserDaemonRestartTests {
    typealias Ring = VhostUserTestRing
    typealias Frontend = VhostUserTestFrontend

    static let writes = 8

    /// Eight 16 KiB writes, heads 3·i at sector 4096 + 32·i; returns the data of each.
    private func publishWrites(_ f: Frontend, seed: Int) -> [[UInt8]] {
        var data: [[UInt8]] = []
        for i in 0..<Self.writes {
            let bytes = (0..<16384).map { UInt8(truncatingIfNeeded: $0 / 5 &+ i &* 29 &+ seed) }
            data.append(bytes)
            f.fill(at: Ring.data(UInt64(i) * 0x4000), with: bytes)
            f.prepare(
                first: 3 * i, type: VirtioBlkType.write, sector: 4096 + UInt64(i * 32), bytes: 16384,
                dataOffset: UInt64(i) * 0x4000)
        }
        f.publish((0..<Self.writes).map { UInt16(3 * $0) })
        return data
    }

    /// A daemon on `image` with a vhost-user socket in a fresh directory.
    private func daemon(image: String, arguments: [String] = [], faults: String? = nil) throws -> (
        DaemonProcess, String
    ) {
        let dir = DaemonProcess.makeDirectory()
        let socket = dir + "/vhost.sock"
        var environment: [String: String]? = nil
        if let faults { environment = ProcessInfo.processInfo.environment.merging(["TAPDISK_FAULTS": faults]) { $1 } }
        let process = try DaemonProcess(
            image: image, arguments: ["--vhost-user-blk", socket] + arguments, directory: dir, environment: environment)
        return (process, socket)
    }

    /// Whether `head`'s status byte is `status` and its write is on disk.
    private func landed(_ f: Frontend, _ image: VhostUserTestDaemon, _ i: Int, _ data: [[UInt8]]) -> Bool {
        f.status(3 * i) == VirtioBlkStatus.ok.rawValue
            && image.imageBytes(sector: 4096 + UInt64(i * 32), count: 16384) == data[i]
    }

    // The fault seam fails the first write to complete with ENOSPC; under `--on-nospace pause`
    // it is held (in flight, from the guest's view) while the other seven complete. kill -9.
    // The next daemon gets the inflight region back, resubmits the held write, and it lands:
    // exactly one used entry per head over both daemons, every write on disk.
    @Test(arguments: 0..<3) func aHeldWriteSurvivesKillAndIsResubmitted(round: Int) throws {
        let first = try VhostUserTestDaemon(
            arguments: ["--on-nospace", "pause", "--pause-timeout", "0"],
            environment: ["TAPDISK_FAULTS": "write:ENOSPC:1"])
        let f = try first.frontend()
        try f.startWithInflight()
        let data = publishWrites(f, seed: round)
        #expect(f.waitForUsed(total: Self.writes - 1), "the other writes did not complete: \(first.log.suffix(1500))")
        #expect(first.waitForState("paused"), "not paused: \(first.state() ?? "no answer")")
        let answered = Set(f.used.map { Int($0.id) / 3 })
        let held = try #require((0..<Self.writes).first { !answered.contains($0) }, "no write held")
        #expect(f.used.count == Self.writes - 1 && f.inflightMarked(3 * held), "held write \(held) not inflight")
        for i in answered { #expect(landed(f, first, i, data), "write \(i) before the kill") }

        first.process.signal(SIGKILL)
        #expect(first.process.waitForExit() != nil)
        let (second, socket) = try daemon(image: first.imagePath)
        try f.reconnect(to: socket)
        #expect(f.waitForUsed(total: Self.writes), "the held write never came back: \(second.log.suffix(1500))")
        _ = f.usedOnceSettled(second)
        print("vhost-user restart round \(round): write \(held) held, used \(f.used.map(\.id))")
        #expect(f.used.count == Self.writes && f.overAnswered.isEmpty, "used \(f.used.map(\.id))")
        #expect(Set(f.used.map(\.id)) == Set((0..<Self.writes).map { UInt32(3 * $0) }))
        for i in 0..<Self.writes { #expect(landed(f, first, i, data), "write \(i) after the restart") }
        for i in 0..<Self.writes { #expect(!f.inflightMarked(3 * i), "head \(3 * i) still inflight") }
        #expect(VhostUserTestDaemon.expectServes(f, "after the restart"))
    }

    // The control: the same kill without INFLIGHT_SHMFD, restarted from used->idx as QEMU does,
    // goes wrong — a completed head is taken again while the held one is lost. This is what
    // the test above would see if the region did not work.
    @Test func withoutInflightTheRestartAnswersTheWrongHeads() throws {
        let first = try VhostUserTestDaemon(
            arguments: ["--on-nospace", "pause", "--pause-timeout", "0"],
            environment: ["TAPDISK_FAULTS": "write:ENOSPC:1"])
        let f = try first.frontend()
        try f.start()
        _ = publishWrites(f, seed: 9)
        #expect(f.waitForUsed(total: Self.writes - 1))
        first.process.signal(SIGKILL)
        #expect(first.process.waitForExit() != nil)
        let (second, socket) = try daemon(image: first.imagePath)
        f.disconnect()
        try f.socketReconnect(to: socket)
        try f.negotiate()
        try f.setUpMemory()
        try f.setUpRing(base: f.ring.usedIndex)
        _ = f.waitForUsed(total: Self.writes, seconds: 2)
        _ = f.usedOnceSettled(second)
        let heads = Set(f.used.map(\.id))
        print("vhost-user restart without inflight: used \(f.used.map(\.id))")
        #expect(heads.count < Self.writes, "every head answered without the inflight region")
    }
}
