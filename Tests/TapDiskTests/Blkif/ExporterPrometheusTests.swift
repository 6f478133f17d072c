import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The exporter against the real thing: three real daemons, the real `tapdisk-exporter`, and
/// Debian's Prometheus scraping it every second while `tapdiskd bench` drives load; the checks
/// are PromQL over Prometheus' HTTP API (issue 17 §1).
@Suite(
    .serialized,
    .enabled(
        if: PrometheusServer.binary != nil && Shell.which("promtool") != nil,
        "Debian's prometheus package (prometheus, promtool) is not installed; scripts/setup.sh installs it"))
struct ExporterPrometheusTests {
    @Test func prometheusScrapesTheExporterUnderLoad() throws {
        let daemons = try (0..<3).map { _ in try DaemonProcess(imageBytes: 64 << 20) }
        // One directory of sockets named like /run/tapdisk/: d0.sock, d1.sock, d2.sock.
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (i, d) in daemons.enumerated() { #expect(symlink(d.socketPath, dir + "/d\(i).sock") == 0) }
        let exporter = try ExporterProcess(sockets: [dir])

        // The exporter's own output, as promtool and an OpenMetrics scraper see it.
        let plain = try LoopbackHTTP.get(port: exporter.port, path: "/metrics", accept: "text/plain")
        #expect(plain.headers.lowercased().contains("content-type: text/plain; version=0.0.4"))
        let lint = try PromtoolCheck.run(plain.body)
        print("promtool check metrics: status \(lint.status), output \"\(lint.output)\"")
        #expect(lint.status == 0 && lint.output.isEmpty, "\(lint.output)")
        let open = try LoopbackHTTP.get(
            port: exporter.port, path: "/metrics", accept: "application/openmetrics-text; version=1.0.0")
        #expect(open.headers.lowercased().contains("content-type: application/openmetrics-text; version=1.0.0"))
        #expect(open.body.hasSuffix("# EOF\n"))

        let prometheus = try PrometheusServer(targets: ["127.0.0.1:\(exporter.port)"])
        _ = try prometheus.waitFor("tapdiskd_up") { r in r.count == 3 && r.allSatisfy { $0.1 == 1 } }

        // The bench attaches, loads for 1 s unmeasured, then 10 s measured, then detaches. Its
        // writes do not run at one rate (the sparse image fills), so Prometheus' 10 s window must
        // be the measured one: it starts 1 s after the attach, which this test sees happen.
        let background = BackgroundBench(
            socket: daemons[0].socketPath,
            arguments: ["--rw", "randwrite", "--iodepth", "4", "--seconds", "10", "--ramp", "1"])
        let watcher = try daemons[0].client()
        var attachedAt: Double? = nil
        let giveUp = Date().addingTimeInterval(10)
        while attachedAt == nil && Date() < giveUp {
            if try watcher.call("status")["attached"]?.boolValue == true { attachedAt = Date().timeIntervalSince1970 }
            usleep(2_000)
        }
        let bench = try #require(background.wait())
        let at = try #require(attachedAt, "the bench never attached") + 11
        #expect(bench.status == 0, "\(bench.stderr)")
        let report = try #require(
            try JSONSerialization.jsonObject(with: Data(bench.stdout.utf8)) as? [String: Any], "\(bench.stdout)")
        let benchIOPS = try #require(report["iops"] as? Double)
        let benchP99 = try #require((report["lat-us"] as? [String: Any])?["p99"] as? Double) / 1e6

        let writes = #"tapdiskd_requests_total{disk="d0",op="write"}"#
        _ = try prometheus.waitFor("timestamp(\(writes))") { ($0.first?.1 ?? 0) > at + 1 }
        let rate = try #require(try prometheus.query("rate(\(writes)[10s])", at: at).first?.1)
        let agreement = abs(rate - benchIOPS) / benchIOPS
        print("rate(requests_total[10s]) = \(rate)/s, bench \(benchIOPS)/s: off by \(agreement * 100)%")
        #expect(agreement <= 0.2, "Prometheus \(rate)/s vs bench \(benchIOPS)/s")

        // The p99 check: the daemon times a request from taking it off the ring to answering
        // it, the bench from queueing it to seeing the answer: writes that allocate blocks in a
        // sparse image keep the disk's share dominant, so the two p99s are comparable (reads of
        // holes take ~10 µs in the daemon and the bench's own scheduling sets its p99).
        let stats = try daemons[0].client().call("stats")
        let bounds = try #require(
            stats["latency"]?["bounds-ns"]?.arrayValue?.compactMap({ $0.uint64Value }),
            "the daemon's stats carry latency histograms")
        let seconds = bounds.map { Double($0) / 1e9 }
        let q = try #require(
            try prometheus.query(
                "histogram_quantile(0.99, sum by (le) (rate(tapdiskd_request_duration_seconds_bucket"
                    + #"{disk="d0",op="write"}[10s])))"#, at: at
            ).first?.1)
        // Bucket i holds (bounds[i-1], bounds[i]]; past the last bound is bucket bounds.count.
        func bucket(_ v: Double) -> Int { seconds.firstIndex { v <= $0 * (1 + 1e-9) } ?? seconds.count }
        print(
            "histogram_quantile(0.99) = \(q) s (bucket \(bucket(q))), bench p99 \(benchP99) s (bucket \(bucket(benchP99)))"
        )
        #expect(abs(bucket(q) - bucket(benchP99)) <= 1, "Prometheus p99 \(q) s vs bench \(benchP99) s")

        // Kill one daemon of three: its up goes to 0, the others' series go on.
        daemons[2].signal(SIGKILL)
        _ = daemons[2].waitForExit()
        let killed = Date().timeIntervalSince1970
        _ = try prometheus.waitFor(#"tapdiskd_up{disk="d2"}"#) { $0.first?.1 == 0 }
        let fresh = try prometheus.waitFor(#"timestamp(tapdiskd_requests_total{disk=~"d0|d1",op="read"})"#) { r in
            r.count == 2 && r.allSatisfy { $0.1 > killed + 1 }
        }
        #expect(fresh.count == 2)
        let up = try prometheus.query("tapdiskd_up")
        print("after kill: " + up.map { "\($0.0["disk"] ?? "?")=\($0.1)" }.sorted().joined(separator: " "))
        #expect(up.filter { $0.1 == 1 }.map { $0.0["disk"] ?? "" }.sorted() == ["d0", "d1"])
        let scrape = try prometheus.query(#"max_over_time(scrape_duration_seconds{job="tapdisk"}[5s])"#)
        print("exporter scrape duration after the kill, max over 5 s: \(scrape.first?.1 ?? -1) s")
        #expect((try prometheus.query(#"up{job="tapdisk"}"#)).first?.1 == 1)
    }
}
