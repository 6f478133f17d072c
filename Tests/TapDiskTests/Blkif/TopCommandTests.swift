import Foundation
import Glibc
import TapDisk
import TapDiskMetrics
import Testing

/// `tapdiskd top`: rates and p99 are differences of two samples, and the real command shows one
/// row per daemon, the loaded one first at the rate its client drove, idle ones at 0 and a
/// killed one as `down`.
@Suite struct TopCommandTests {
    /// A `DaemonSample` answering with `status` and `stats` given as JSON text.
    static func sample(_ disk: String, status: String, stats: String) throws -> DaemonSample {
        let s = try #require(try JSONParser.parse(status).objectValue)
        let t = try #require(try JSONParser.parse(stats).objectValue)
        return DaemonSample(
            disk: disk, socketPath: "/run/tapdisk/\(disk).sock", replies: .init(info: [:], status: s, stats: t),
            seconds: 0.001)
    }

    /// Bounds 1, 2, 5 µs and the overflow bucket, to keep the fixtures short.
    static func stats(reads: Int, writes: Int, readBytes: Int, writeBytes: Int, read: [Int], write: [Int]) -> String {
        """
        {"counters":{"read-requests":\(reads),"write-requests":\(writes),"read-bytes":\(readBytes),\
        "write-bytes":\(writeBytes)},"latency":{"bounds-ns":[1000,2000,5000],\
        "read":{"count":\(read.reduce(0, +)),"sum-ns":0,"buckets":\(read)},\
        "write":{"count":\(write.reduce(0, +)),"sum-ns":0,"buckets":\(write)}}}
        """
    }

    static func status(uptime: Double) -> String {
        #"{"state":"running","io-status":"ok","front":"blkif","in-flight":3,"held":1,"uptime-seconds":\#(uptime)}"#
    }

    @Test func ratesAndP99AreOverTheInterval() throws {
        // Two seconds apart by the daemon's clock (the scrape's 1.5 s is ignored): 400 reads of
        // 4 KiB and 200 writes of 8 KiB. Before, 1,000 slow reads (in the 5 µs bucket) that must
        // not count towards this interval's p99; in it, 594 requests ≤ 1 µs, 6 ≤ 2 µs: the 594th
        // is the 99th percentile's rank (ceil(600 × 0.99) = 594), so p99 ≤ 1 µs.
        let before = try Self.sample(
            "a", status: Self.status(uptime: 10),
            stats: Self.stats(
                reads: 1000, writes: 0, readBytes: 1000 * 4096, writeBytes: 0, read: [0, 0, 1000, 0],
                write: [0, 0, 0, 0]))
        let after = try Self.sample(
            "a", status: Self.status(uptime: 12),
            stats: Self.stats(
                reads: 1400, writes: 200, readBytes: 1400 * 4096, writeBytes: 200 * 8192, read: [400, 0, 1000, 0],
                write: [194, 6, 0, 0]))
        let row = try #require(TopRow.rows(previous: [before], current: [after], seconds: 1.5).first)
        #expect(row.readIOPS == 200)
        #expect(row.writeIOPS == 100)
        #expect(row.readBytesPerSecond == Double(200 * 4096))
        #expect(row.writeBytesPerSecond == Double(100 * 8192))
        #expect(row.p99Nanos == 1000)
        #expect(row.inFlight == 3 && row.held == 1 && row.state == "running" && row.front == "blkif")

        // Seven more requests of 2 µs push the rank past the 1 µs bucket; one overflow request
        // out of one puts p99 beyond the last bound.
        let slower = try Self.sample(
            "a", status: Self.status(uptime: 12),
            stats: Self.stats(
                reads: 1400, writes: 200, readBytes: 0, writeBytes: 0, read: [400, 0, 1000, 0], write: [194, 13, 0, 0]))
        #expect(TopRow.rows(previous: [before], current: [slower], seconds: 2).first?.p99Nanos == 2000)
        let overflow = try Self.sample(
            "a", status: Self.status(uptime: 11),
            stats: Self.stats(
                reads: 1001, writes: 0, readBytes: 0, writeBytes: 0, read: [0, 0, 1000, 1], write: [0, 0, 0, 0]))
        #expect(TopRow.rows(previous: [before], current: [overflow], seconds: 1).first?.p99Nanos == .max)
        // Nothing completed: no p99; no earlier sample: no rates.
        #expect(TopRow.rows(previous: [before], current: [before], seconds: 1).first?.p99Nanos == nil)
        let first = try #require(TopRow.rows(previous: [], current: [after], seconds: 1).first)
        #expect(first.readIOPS == nil && first.p99Nanos == nil && first.state == "running")
    }

    @Test func restartedCountersCountFromZeroAndRowsSortByIOPS() throws {
        let old = try Self.sample(
            "b", status: Self.status(uptime: 100),
            stats: Self.stats(
                reads: 5000, writes: 0, readBytes: 0, writeBytes: 0, read: [5000, 0, 0, 0], write: [0, 0, 0, 0]))
        // Restarted: uptime went down, so the scrape interval is used, and the counters are new.
        let restarted = try Self.sample(
            "b", status: Self.status(uptime: 1),
            stats: Self.stats(
                reads: 30, writes: 0, readBytes: 0, writeBytes: 0, read: [30, 0, 0, 0], write: [0, 0, 0, 0]))
        let idle = try Self.sample(
            "a", status: Self.status(uptime: 1),
            stats: Self.stats(
                reads: 0, writes: 0, readBytes: 0, writeBytes: 0, read: [0, 0, 0, 0], write: [0, 0, 0, 0]))
        let down = DaemonSample(
            disk: "0dead", socketPath: "/run/tapdisk/0dead.sock", replies: nil, failure: "gone", seconds: 0)
        let rows = TopRow.rows(previous: [old, idle], current: [idle, down, restarted], seconds: 2)
        #expect(rows.map(\.disk) == ["b", "0dead", "a"])
        #expect(rows[0].readIOPS == 15)
        #expect(rows[1].state == "down" && rows[1].failure == "gone" && rows[1].readIOPS == nil)
        #expect(rows[2].readIOPS == 0)
    }

    /// Three daemons behind one directory; `tapdiskd bench` loads one; one is killed.
    @Test func topShowsEveryDaemonLoadedOneFirst() throws {
        let daemons = try (0..<3).map { _ in try DaemonProcess(imageBytes: 64 << 20) }
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (name, d) in zip(["busy", "idle", "killed"], daemons) {
            #expect(symlink(d.socketPath, "\(dir)/\(name).sock") == 0)
        }
        // SIGKILL leaves the socket file behind: connecting is refused, as for a crashed daemon.
        daemons[2].signal(SIGKILL)
        _ = daemons[2].waitForExit()

        let background = BackgroundBench(
            socket: daemons[0].socketPath,
            arguments: ["--rw", "randread", "--iodepth", "4", "--seconds", "5", "--ramp", "1"])
        let watcher = try daemons[0].client()
        #expect(
            DaemonTest.waitUntil(seconds: 10) { (try? watcher.call("status")["attached"]?.boolValue) == true },
            "the bench never attached")
        // Past the bench's ramp; top's 3 s interval then lies inside the bench's measured 5 s and
        // covers most of it, so a burst or a stall of the shared CPUs weighs in both alike.
        usleep(1_000_000)
        let top = try Tapdiskd.run(["top", "--once", "--json", "--sockets", dir, "--interval", "3"])
        #expect(top.status == 0, "\(top.stderr)")
        let bench = try #require(background.wait())
        #expect(bench.status == 0, "\(bench.stderr)")
        let report = try #require(
            try JSONSerialization.jsonObject(with: Data(bench.stdout.utf8)) as? [String: Any], "\(bench.stdout)")
        let benchIOPS = try #require(report["iops"] as? Double)

        let lines = top.stdout.split(separator: "\n")
        #expect(lines.count == 1, "--once prints one sample: \(top.stdout)")
        let sample = try #require(
            try JSONSerialization.jsonObject(with: Data(top.stdout.utf8)) as? [String: Any], "\(top.stdout)")
        let disks = try #require(sample["disks"] as? [[String: Any]])
        #expect(disks.map { $0["disk"] as? String } == ["busy", "idle", "killed"])
        let busy = disks[0]
        let topIOPS = try #require(busy["read-iops"] as? Double)
        print("top: \(topIOPS) read IOPS; bench: \(benchIOPS) IOPS")
        #expect(abs(topIOPS - benchIOPS) <= 0.5 * benchIOPS, "top \(topIOPS)/s vs bench \(benchIOPS)/s")
        #expect(busy["write-iops"] as? Double == 0)
        // 4 KiB requests; requests are counted as consumed and bytes as answered, so the two
        // counters sit a few requests apart at any one sample.
        let bytesRate = try #require(busy["read-bytes-per-second"] as? Double)
        #expect(abs(bytesRate - topIOPS * 4096) <= 0.05 * topIOPS * 4096, "\(bytesRate) B/s at \(topIOPS)/s")
        #expect(busy["p99-ns"] is NSNumber, "\(busy)")
        #expect(busy["state"] as? String == "running")
        #expect(busy["front"] as? String == "blkif")
        #expect(busy["limit"] as? String == "none" && busy["throttled"] as? Bool == false, "\(busy)")
        let idle = disks[1]
        #expect(idle["read-iops"] as? Double == 0 && idle["write-iops"] as? Double == 0)
        #expect(idle["p99-ns"] is NSNull)
        #expect(idle["state"] as? String == "idle")
        let killed = disks[2]
        #expect(killed["state"] as? String == "down")
        #expect(killed["read-iops"] is NSNull)
        #expect(killed["error"] is String)
    }

    @Test func tableHasOneRowPerDaemon() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let top = try Tapdiskd.run(["top", "--once", "--sockets", daemon.socketPath, "--interval", "0.2"])
        #expect(top.status == 0, "\(top.stderr)")
        let lines = top.stdout.split(separator: "\n")
        #expect(lines.count == 2, "\(top.stdout)")
        #expect(lines.first?.hasPrefix("DISK") == true)
        let cells = lines.last?.split(separator: " ") ?? []
        #expect(cells.first == "disk" && cells.contains("idle") && cells.last == "none", "\(top.stdout)")
    }
}
