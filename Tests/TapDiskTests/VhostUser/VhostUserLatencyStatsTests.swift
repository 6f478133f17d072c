import Glibc
import Testing

@testable import TapDisk

/// The virtqueue front records into the same histograms as the ring: the real daemon with
/// `--vhost-user-blk`, a test front-end's READs and WRITEs, then `stats`.
@Suite struct VhostUserLatencyStatsTests {
    @Test func virtioRequestsLandInTheHistograms() throws {
        let daemon = try VhostUserTestDaemon()
        let f = try daemon.started()
        let data = [UInt8](repeating: 0x3C, count: 4096)
        for i in 0..<5 {
            #expect(
                f.write(sector: 2048 + UInt64(i) * 8, data, first: 3, dataOffset: 0x4_0000)
                    == VirtioBlkStatus.ok.rawValue)
        }
        for i in 0..<7 {
            #expect(f.read(sector: UInt64(i) * 8, first: 6, dataOffset: 0x6_0000)?.0 == VirtioBlkStatus.ok.rawValue)
        }
        let (histograms, counters) = try DaemonTest.latency(daemon.process.client())
        #expect(counters["in-flight"]?.uint64Value == 0)
        #expect(histograms["write"]?.count == 5 && counters["write-requests"]?.uint64Value == 5)
        #expect(histograms["read"]?.count == 7 && counters["read-requests"]?.uint64Value == 7)
        #expect((histograms["read"]?.sumNanos ?? 0) > 0 && (histograms["write"]?.sumNanos ?? 0) > 0)
        for name in ["flush", "barrier", "discard"] { #expect(histograms[name]?.count == 0, "\(name)") }
        f.disconnect()
    }
}
