import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// Per-disk QoS in the real daemon (issue 17 §2): a limited disk holds requests back without
/// answering them in error, `set-limits` changes the limits of a disk being served, and the
/// command line and `ctl` take QEMU's names. Whether a limit is reached is judged from the
/// daemon's own view (`status`' `throttled`, the counters), never from elapsed time: rates are
/// measured by the benchmark (docs/performance.md, "QoS").
@Suite struct DaemonThrottleTests {
    /// One request per second with a bucket of a tenth of a request: the first read of a burst
    /// is consumed, the next waits a second, so 30 queued reads would take half a minute.
    static let slow: JSONObject = ["iops-total": 1]

    /// `count` 4 KiB reads (ids from `firstID`, one data page each) and a FLUSH behind them.
    static func post(_ frontend: BlockFrontend, count: Int, firstID: UInt64) {
        for i in 0..<count {
            frontend.enqueue(
                BlkifRequest.read(
                    id: firstID + UInt64(i), sector: UInt64(i) * 8, segments: [BlkifSegment(gref: UInt32(i))]))
        }
        frontend.enqueue(BlkifRequest.flush(id: firstID + UInt64(count)))
        frontend.push()
    }

    /// Reaps until `ids` are all answered or `seconds` pass; every answer must be OKAY, once.
    static func collect(_ disk: RemoteDisk, _ ids: Range<UInt64>, seconds: Double) -> Set<UInt64> {
        var answered = Set<UInt64>()
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while answered.count < ids.count && MonotonicClock.nanoseconds() < deadline {
            _ = disk.waitForResponses(timeoutMilliseconds: 50)
            _ = disk.frontend.reap { r in
                #expect(ids.contains(r.id), "unknown id \(r.id)")
                #expect(r.status == 0, "id \(r.id) answered \(r.status): a limit is back-pressure, never an error")
                #expect(answered.insert(r.id).inserted, "id \(r.id) answered twice")
            }
        }
        return answered
    }

    static func throttled(_ control: ControlClient) throws -> Bool {
        try control.call("status")["throttled"]?.boolValue == true
    }

    @Test func setLimitsHoldsARunningDiskBackAndReleasesIt() throws {
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let daemon = try DaemonProcess(image: image, arguments: ["--cache", "writeback"])
        let disk = try RemoteDisk(socketPath: daemon.socketPath, pageOrder: 0, dataPages: 32)
        let watcher = try daemon.client()
        var status = try watcher.call("status")
        #expect(status["limits"] == .object([:]) && status["throttled"] == .bool(false))
        #expect(status["limits-effective-us"] == .null)

        // Unlimited: a burst of 30 reads and a FLUSH is answered at once.
        Self.post(disk.frontend, count: 30, firstID: 1)
        #expect(Self.collect(disk, 1..<32, seconds: 10).count == 31)

        // One per second: the next burst is held back; the daemon says so, and consumed almost
        // none of it (the ring, not an error, tells the frontend to wait).
        let set = try watcher.call("set-limits", ["limits": .object(Self.slow)])
        #expect(set["limits"] == .object(Self.slow))
        Self.post(disk.frontend, count: 30, firstID: 100)
        #expect(try DaemonTest.waitUntil(seconds: 10) { try Self.throttled(watcher) }, "never throttled")
        status = try watcher.call("status")
        #expect(status["limits"] == .object(Self.slow))
        let heldBack = try DaemonTest.expectInvariant(watcher)
        #expect(heldBack["read-requests"] < 30 + 30, "the limit consumed \(heldBack["read-requests"] - 30) of 30")
        #expect(heldBack["flush-requests"] == 1, "the FLUSH behind the reads waits for them, in order")

        // Lifted: everything waiting is consumed and answered within a moment, which at one
        // request per second would have taken half a minute.
        try watcher.call("set-limits", ["limits": .object([:])])
        #expect(Self.collect(disk, 100..<131, seconds: 5).count == 31, "set-limits did not release the disk")
        let after = try DaemonTest.expectInvariant(watcher)
        #expect(after["read-requests"] == 60 && after["flush-requests"] == 2)
        #expect(after["responses-okay"] == 62 && after["responses-error"] == 0)
        let counters = try #require(try watcher.call("stats")["counters"]?.objectValue)
        #expect((counters["throttle-delayed-requests"]?.uint64Value ?? 0) >= 1)
        #expect((counters["throttled-seconds"]?.doubleValue ?? 0) > 0)
        status = try watcher.call("status")
        #expect(status["limits"] == .object([:]) && status["throttled"] == .bool(false))
        _ = try disk.detach()
    }

    @Test func commandLineLimitAppliesFromTheFirstRequest() throws {
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let daemon = try DaemonProcess(
            image: image, arguments: ["--cache", "writeback", "--limit", "iops-read=1,bps-write=1M"])
        let watcher = try daemon.client()
        let status = try watcher.call("status")
        #expect(status["limits"] == .object(["iops-read": 1, "bps-write": 1_048_576]))
        let disk = try RemoteDisk(socketPath: daemon.socketPath, pageOrder: 0, dataPages: 32)
        Self.post(disk.frontend, count: 20, firstID: 1)
        #expect(try DaemonTest.waitUntil(seconds: 10) { try Self.throttled(watcher) }, "never throttled")
        #expect(try DaemonTest.stats(watcher)["read-requests"] < 20)
        // A higher limit takes effect at once: the new buckets start empty, and the disk is
        // serviced in the command itself.
        let set = try watcher.call("set-limits", ["limits": ["iops-read": 100_000]])
        #expect(set["limits"] == .object(["iops-read": 100_000]))
        #expect(Self.collect(disk, 1..<22, seconds: 5).count == 21)
        let effective = try #require(try watcher.call("status")["limits-effective-us"]?.uint64Value)
        print("set-limits to the first consumption under it: \(effective) µs")
        #expect(effective < 10_000, "the first request after set-limits waited \(effective) µs")
        _ = try disk.detach()
    }

    @Test func setLimitsRefusesWhatQEMURefuses() throws {
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let daemon = try DaemonProcess(image: image, arguments: ["--limit", "iops-total=50"])
        let c = try daemon.client()
        let cases: [(JSONObject, String)] = [
            ([:], "bad-request"),
            (["limits": 5], "bad-request"),
            (["limits": ["iops-total": 1.5]], "bad-request"),
            (["limits": ["iops-total": "5"]], "bad-request"),
            (["limits": ["iops-total": -1]], "invalid-argument"),
            (["limits": ["iops-total": 5, "iops-read": 1]], "invalid-argument"),
            (["limits": ["bogus": 1]], "invalid-argument"),
            (["limits": ["iops-total": 5, "iops-total-max": 1]], "invalid-argument"),
        ]
        for (arguments, code) in cases {
            let reply = try c.request("set-limits", arguments)
            #expect(DaemonTest.code(reply) == code, "\(arguments): \(reply)")
        }
        // A refused change leaves the limits as they were.
        #expect(try c.call("status")["limits"] == .object(["iops-total": 50]))
    }

    @Test func ctlAndServeTakeQEMUNames() throws {
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let bad = try Tapdiskd.run(["serve", "--image", image, "--socket", "/tmp/x.sock", "--limit", "iops=5"])
        #expect(bad.status != 0 && bad.stderr.contains("unknown limit 'iops'"), "\(bad.stderr)")
        let daemon = try DaemonProcess(image: image)
        let set = try Tapdiskd.run([
            "ctl", "--socket", daemon.socketPath, "set-limits",
            "bps-total=10M,bps-total-max=20M,bps-total-max-length=3",
        ])
        #expect(set.status == 0, "\(set.stderr)")
        #expect(
            set.stdout.contains("limits.bps-total: 10485760") && set.stdout.contains("limits.bps-total-max-length: 3"))
        let status = try Tapdiskd.run(["ctl", "--socket", daemon.socketPath, "status"])
        #expect(status.stdout.contains("limits.bps-total-max: 20971520") && status.stdout.contains("throttled: false"))
        let refused = try Tapdiskd.run([
            "ctl", "--socket", daemon.socketPath, "set-limits", "bps-total=1M,bps-read=1M",
        ])
        #expect(refused.status != 0 && refused.stderr.contains("cannot be used together"))
        let none = try Tapdiskd.run(["ctl", "--socket", daemon.socketPath, "set-limits", "none"])
        #expect(none.status == 0)
        #expect(try daemon.client().call("status")["limits"] == .object([:]))
    }
}
