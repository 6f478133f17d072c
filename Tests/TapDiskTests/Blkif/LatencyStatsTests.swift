import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// `stats` of the real daemon carries the latency histograms (docs/protocol.md §2.2): after some
/// I/O of every kind, each operation's `count` is its `*-requests` counter (nothing is in flight
/// or held), and `tapdiskd ctl stats` prints one summary line per operation.
@Suite struct LatencyStatsTests {
    @Test func statsReturnsOneHistogramPerOperationWithTheAnsweredRequests() throws {
        let daemon = try DaemonProcess(imageBytes: 4 << 20)
        defer { daemon.forceStop() }
        let d = try DiskDriver(socketPath: daemon.socketPath)
        let empty = try DaemonTest.latency(d.control)
        #expect(empty.histograms.values.allSatisfy { $0.count == 0 && $0.sumNanos == 0 })

        var id: UInt64 = 0
        func next() -> UInt64 {
            id += 1
            return id
        }
        for i in 0..<6 { d.enqueueWrite(id: next(), sector: UInt64(i) * 8, gref: UInt32(i % 4), seed: UInt64(i)) }
        for i in 0..<4 { d.enqueueRead(id: next(), sector: UInt64(i) * 8, gref: UInt32(4 + i)) }
        for _ in 0..<2 { d.frontend.enqueue(BlkifRequest.flush(id: next())) }
        d.frontend.enqueue(BlkifRequest.barrier(id: next()))
        for i in 0..<3 {
            d.frontend.enqueue(BlkifRequest.discard(id: next(), sector: 1024 + UInt64(i) * 64, sectors: 8))
        }
        d.push()
        #expect(d.wait(forResponses: Int(id)))
        #expect((1...id).allSatisfy { d.status($0) == 0 })

        let (histograms, counters) = try DaemonTest.latency(d.control)
        #expect(counters["in-flight"]?.uint64Value == 0 && counters["held"]?.uint64Value == 0)
        let expected: [String: UInt64] = ["write": 6, "read": 4, "flush": 2, "barrier": 1, "discard": 3]
        for (name, count) in expected {
            #expect(histograms[name]?.count == count, "\(name)")
            #expect(counters["\(name)-requests"]?.uint64Value == count, "\(name)")
            #expect((histograms[name]?.sumNanos ?? 0) > 0, "\(name): I/O takes time")
        }

        let run = try Tapdiskd.run(["ctl", "--socket", daemon.socketPath, "stats"])
        let lines = run.stdout.split(separator: "\n").map(String.init)
        #expect(run.status == 0)
        #expect(lines.contains { $0.hasPrefix("latency.write: count=6 mean-us=") && $0.contains(" p99-us") })
        #expect(lines.contains { $0.hasPrefix("latency.barrier: count=1 ") })
        #expect(lines.contains("counters.write-requests: 6"), "the counters are printed as before")
        #expect(!lines.contains { $0.contains("buckets") }, "the raw buckets are for --json")
    }
}
