import Foundation
import Testing

@testable import TapDisk
@testable import TapDiskMetrics

/// The exporter's rendering of daemons' replies, from fixture replies: what each metric family
/// becomes in both formats, and that the latency histograms appear exactly when `stats` has them.
@Suite struct ExporterRenderingTests {
    static let info = #"{"ok":true,"tag":1,"protocol":1,"image":"/i","sectors":2048,"state":"running"}"#
    static let status = #"""
        {"ok":true,"tag":2,"state":"paused","reason":"nospace","io-status":"nospace","in-flight":3,"held":2,
         "attached":true,"front":"blkif","image-space":{"apparent-bytes":1048576,"allocated-bytes":4096,
         "fs-free-bytes":0,"overcommit-bytes":1044480},"uptime-seconds":12.5,
         "limits":{"iops-read":200,"bps-write":10485760,"bps-write-max":20971520},"throttled":true}
        """#
    static let counters = #"""
        "counters":{"read-requests":10,"write-requests":7,"flush-requests":1,"barrier-requests":0,"discard-requests":0,
         "read-bytes":40960,"write-bytes":28672,"discard-bytes":0,"read-errors":0,"write-errors":2,"flush-errors":0,
         "discard-errors":0,"nospace-errors":2,"invalid-requests":0,"unsupported-requests":0,"short-completions":0,
         "resubmitted-requests":0,"responses-okay":11,"responses-error":2,"responses-eopnotsupp":0,"in-flight":3,
         "held":2,"id-requests":0,"rejections":{"bad-segment":0},"errors-by-errno":{"ENOSPC":2},"control-connections-refused":0,
         "fd-exhaustion-episodes":0,"poll-microseconds":1500000,"poll-hits":5,"poll-misses":9,
         "paused-seconds":{"operator":0,"nospace":3.5,"io-error":0},"throttled-seconds":1.25,
         "throttle-delayed-requests":7}
        """#
    /// The format of `stats`' `latency` (docs/protocol.md): shared bounds (1-2-5 per decade,
    /// 1 µs to 10 s), per-operation counts per bucket (not cumulative) plus one overflow bucket.
    static let boundsNanos: [UInt64] = {
        var b: [UInt64] = []
        var d: UInt64 = 1000
        while d < 10_000_000_000 {
            b += [d, 2 * d, 5 * d]
            d *= 10
        }
        return b + [d]
    }()
    static var latency: String {
        var read = [UInt64](repeating: 0, count: 23)
        read[3] = 4  // ≤ 10 µs
        read[5] = 5  // ≤ 50 µs
        read[22] = 1  // above 10 s
        let write = [UInt64](repeating: 0, count: 23)
        let bounds = boundsNanos.map(String.init).joined(separator: ",")
        return #""latency":{"bounds-ns":[\#(bounds)],"#
            + #""read":{"count":10,"sum-ns":10000250000,"buckets":[\#(read.map(String.init).joined(separator: ","))]},"#
            + #""write":{"count":0,"sum-ns":0,"buckets":[\#(write.map(String.init).joined(separator: ","))]}}"#
    }

    static func object(_ text: String) throws -> JSONObject {
        try #require(try JSONParser.parse(text).objectValue)
    }

    static func sample(disk: String = "vm1-xvda", histograms: Bool) throws -> DaemonSample {
        let stats = "{\"ok\":true,\"tag\":3," + counters + (histograms ? "," + latency : "") + "}"
        return DaemonSample(
            disk: disk, socketPath: "/run/tapdisk/\(disk).sock",
            replies: .init(info: try object(info), status: try object(status), stats: try object(stats)),
            seconds: 0.002)
    }

    static func lines(_ text: String) -> Set<Substring> { Set(text.split(separator: "\n")) }

    @Test func histogramsRenderCumulativeInSeconds() throws {
        let text = ExpositionFormat.prometheus.render(DaemonMetrics.families([try Self.sample(histograms: true)]))
        let lines = Self.lines(text)
        let l = #"disk="vm1-xvda",front="blkif",op="read""#
        #expect(lines.contains("# TYPE tapdiskd_request_duration_seconds histogram"))
        #expect(lines.contains("tapdiskd_request_duration_seconds_bucket{\(l),le=\"1e-06\"} 0"))
        #expect(lines.contains("tapdiskd_request_duration_seconds_bucket{\(l),le=\"1e-05\"} 4"))
        #expect(lines.contains("tapdiskd_request_duration_seconds_bucket{\(l),le=\"2e-05\"} 4"))
        #expect(lines.contains("tapdiskd_request_duration_seconds_bucket{\(l),le=\"5e-05\"} 9"))
        #expect(lines.contains("tapdiskd_request_duration_seconds_bucket{\(l),le=\"10\"} 9"))
        #expect(lines.contains("tapdiskd_request_duration_seconds_bucket{\(l),le=\"+Inf\"} 10"))
        #expect(lines.contains("tapdiskd_request_duration_seconds_count{\(l)} 10"))
        #expect(lines.contains("tapdiskd_request_duration_seconds_sum{\(l)} 10.00025"))
        #expect(lines.filter { $0.hasPrefix("tapdiskd_request_duration_seconds_bucket{\(l)") }.count == 23)
        #expect(lines.contains(#"tapdiskd_request_duration_seconds_count{disk="vm1-xvda",front="blkif",op="write"} 0"#))
    }

    @Test func withoutHistogramsTheRestStays() throws {
        let text = ExpositionFormat.prometheus.render(DaemonMetrics.families([try Self.sample(histograms: false)]))
        let lines = Self.lines(text)
        #expect(!text.contains("request_duration"))
        let d = #"disk="vm1-xvda",front="blkif""#
        #expect(lines.contains(#"tapdiskd_up{disk="vm1-xvda"} 1"#))
        #expect(lines.contains("# TYPE tapdiskd_requests_total counter"))
        #expect(lines.contains("tapdiskd_requests_total{\(d),op=\"read\"} 10"))
        #expect(lines.contains("tapdiskd_bytes_total{\(d),op=\"write\"} 28672"))
        #expect(lines.contains("tapdiskd_errors_total{\(d),op=\"write\"} 2"))
        #expect(lines.contains("tapdiskd_nospace_errors_total{\(d)} 2"))
        #expect(lines.contains("tapdiskd_errors_by_errno_total{\(d),errno=\"ENOSPC\"} 2"))
        #expect(lines.contains("tapdiskd_responses_total{\(d),status=\"error\"} 2"))
        #expect(lines.contains("tapdiskd_in_flight_requests{\(d)} 3"))
        #expect(lines.contains("tapdiskd_held_requests{\(d)} 2"))
        #expect(lines.contains("tapdiskd_state{\(d),state=\"paused\"} 1"))
        #expect(lines.contains("tapdiskd_state{\(d),state=\"running\"} 0"))
        #expect(lines.contains("tapdiskd_paused{\(d),reason=\"nospace\"} 1"))
        #expect(lines.contains("tapdiskd_paused_seconds_total{\(d),reason=\"nospace\"} 3.5"))
        #expect(lines.contains("tapdiskd_paused_seconds_total{\(d),reason=\"operator\"} 0"))
        #expect(lines.contains("tapdiskd_io_status{\(d),status=\"nospace\"} 1"))
        #expect(lines.contains("tapdiskd_image_overcommit_bytes{\(d)} 1044480"))
        #expect(lines.contains("tapdiskd_poll_seconds_total{\(d)} 1.5"))
        #expect(lines.contains("tapdiskd_poll_misses_total{\(d)} 9"))
        #expect(lines.contains("tapdiskd_frontend_connected{\(d)} 1"))
        #expect(lines.contains(#"tapdiskd_build_info{disk="vm1-xvda",protocol="1"} 1"#))
    }

    @Test func aDownDaemonIsOnlyUpZero() throws {
        let down = DaemonSample(
            disk: "dead", socketPath: "/x/dead.sock", replies: nil, failure: "ECONNREFUSED", seconds: 0)
        let text = ExpositionFormat.prometheus.render(
            DaemonMetrics.families([down, try Self.sample(disk: "alive", histograms: false)]))
        let lines = Self.lines(text)
        #expect(lines.contains(#"tapdiskd_up{disk="dead"} 0"#))
        #expect(lines.contains(#"tapdiskd_up{disk="alive"} 1"#))
        #expect(
            !lines.contains {
                $0.contains(#"disk="dead""#) && !$0.hasPrefix("tapdiskd_up") && !$0.hasPrefix("tapdiskd_query")
            })
    }

    @Test func openMetricsNamesCounterFamiliesWithoutTotalAndEnds() throws {
        let text = ExpositionFormat.openMetrics.render(DaemonMetrics.families([try Self.sample(histograms: true)]))
        #expect(text.hasSuffix("\n# EOF\n"))
        let lines = Self.lines(text)
        #expect(lines.contains("# TYPE tapdiskd_requests counter"))
        #expect(lines.contains(#"tapdiskd_requests_total{disk="vm1-xvda",front="blkif",op="read"} 10"#))
        #expect(!ExpositionFormat.prometheus.render([]).contains("EOF"))
    }

    @Test func acceptChoosesTheFormat() {
        // What Prometheus 2.42 sends.
        let prometheus =
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
            + "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        #expect(ExpositionFormat(accept: prometheus) == .openMetrics)
        #expect(ExpositionFormat(accept: "text/plain") == .prometheus)
        #expect(ExpositionFormat(accept: nil) == .prometheus)
        #expect(ExpositionFormat.openMetrics.contentType.hasPrefix("application/openmetrics-text; version=1.0.0"))
    }

    @Test func labelValuesAreEscaped() {
        let f = MetricFamily(
            name: "x", help: "h", kind: .gauge,
            samples: [.init(labels: [.init("disk", "a\"b\\c\nd")], value: .integer(1))])
        #expect(ExpositionFormat.prometheus.render([f]).contains(#"x{disk="a\"b\\c\nd"} 1"#))
    }

    @Test func socketSetLabelsDisksBySocketName() throws {
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for name in ["b.sock", "a.sock", "notes.txt", "a.vhost.sock"] {
            _ = FileManager.default.createFile(atPath: dir + "/" + name, contents: nil)
        }
        let found = SocketSet(patterns: [dir]).expand()
        #expect(found.map(\.disk) == ["a", "b"])
        #expect(found.map(\.path) == [dir + "/a.sock", dir + "/b.sock"])
        #expect(SocketSet(patterns: [dir + "/b*"]).expand().map(\.disk) == ["b"])
        // The same directory twice finds each socket once.
        #expect(SocketSet(patterns: [dir, dir + "/"]).expand().count == 2)
    }

    /// `promtool check metrics` lints names, units, help and types; it must find nothing.
    @Test(.enabled(if: Shell.which("promtool") != nil, "promtool not installed (Debian package prometheus)"))
    func promtoolFindsNothing() throws {
        let text = ExpositionFormat.prometheus.render(
            DaemonMetrics.families([
                try Self.sample(disk: "a", histograms: true), try Self.sample(disk: "b", histograms: false),
                DaemonSample(disk: "c", socketPath: "/c.sock", replies: nil, seconds: 0),
            ]))
        let result = try PromtoolCheck.run(text)
        #expect(result.status == 0 && result.output.isEmpty, "\(result.output)")
    }
}
