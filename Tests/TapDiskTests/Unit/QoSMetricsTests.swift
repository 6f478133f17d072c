import Testing

@testable import TapDisk
@testable import TapDiskMetrics

/// The QoS part of the metric set and of `tapdiskd top` (issue 17 §1, §3), from the fixture
/// replies of `ExporterRenderingTests`, whose `status` carries limits and `throttled` and whose
/// `stats` carries `throttled-seconds` and `throttle-delayed-requests` (so its promtool check
/// covers these families too).
@Suite struct QoSMetricsTests {
    @Test func qosFamiliesRender() throws {
        let sample = try ExporterRenderingTests.sample(histograms: false)
        let text = ExpositionFormat.prometheus.render(DaemonMetrics.families([sample]))
        let lines = ExporterRenderingTests.lines(text)
        let d = #"disk="vm1-xvda",front="blkif""#
        #expect(lines.contains("# TYPE tapdiskd_throttled_seconds_total counter"))
        #expect(lines.contains("tapdiskd_throttled_seconds_total{\(d)} 1.25"))
        #expect(lines.contains("tapdiskd_throttle_delayed_requests_total{\(d)} 7"))
        #expect(lines.contains("tapdiskd_throttled{\(d)} 1"))
        #expect(lines.contains("tapdiskd_limit_iops{\(d),op=\"read\"} 200"))
        #expect(lines.contains("tapdiskd_limit_bytes_per_second{\(d),op=\"write\"} 10485760"))
        // Only the limits that are set are series; bursts are not.
        #expect(!lines.contains { $0.hasPrefix("tapdiskd_limit_iops{\(d),op=\"total\"}") })
        #expect(lines.filter { $0.hasPrefix("tapdiskd_limit_bytes_per_second{") }.count == 1)
        let open = ExpositionFormat.openMetrics.render(DaemonMetrics.families([sample]))
        #expect(open.contains("tapdiskd_throttled_seconds_total{\(d)} 1.25"))
        #expect(open.contains("# TYPE tapdiskd_throttled_seconds counter"))
    }

    @Test func topShowsTheLimitAndWhetherItHoldsBack() throws {
        let sample = try ExporterRenderingTests.sample(histograms: false)
        let row = TopRow.row(nil, sample, seconds: 1)
        #expect(row.limit == "iops-read=200,bps-write=10M,bps-write-max=20M")
        #expect(row.throttled == true)
        var unlimited = try #require(sample.replies)
        unlimited.status.set("limits", .object([:]))
        unlimited.status.set("throttled", false)
        let plain = TopRow.row(
            nil, DaemonSample(disk: "b", socketPath: "/b.sock", replies: unlimited, seconds: 0), seconds: 1)
        #expect(plain.limit == "none" && plain.throttled == false)
        #expect(
            TopRow.limitText(["bps-total": 1000, "iops-total-max-length": 3])
                == "bps-total=1000,iops-total-max-length=3")
    }
}
