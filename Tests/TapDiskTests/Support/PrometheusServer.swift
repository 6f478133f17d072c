import Foundation
import Glibc

/// A throw-away Prometheus (Debian's `prometheus` package) scraping given targets every second,
/// on loopback ports of its own and a temporary TSDB; never the system service on 9090.
final class PrometheusServer {
    let process = Process()
    let directory: String
    let port: Int
    var url: String { "http://127.0.0.1:\(port)" }

    static var binary: String? { Shell.which("prometheus") }

    init(targets: [String], scrapeTimeout: String = "900ms") throws {
        directory = DaemonProcess.makeDirectory()
        port = try LoopbackHTTP.freePort()
        let config = """
            global:
              scrape_interval: 1s
              scrape_timeout: \(scrapeTimeout)
              evaluation_interval: 1s
            scrape_configs:
              - job_name: tapdisk
                static_configs:
                  - targets: [\(targets.map { "'\($0)'" }.joined(separator: ", "))]
            """
        try config.write(toFile: directory + "/prometheus.yml", atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: Self.binary ?? "/usr/bin/prometheus")
        process.arguments = [
            "--config.file=\(directory)/prometheus.yml", "--storage.tsdb.path=\(directory)/data",
            "--web.listen-address=127.0.0.1:\(port)", "--log.level=warn",
        ]
        let log = directory + "/prometheus.log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        process.standardOutput = FileHandle(forWritingAtPath: log)
        process.standardError = FileHandle(forWritingAtPath: log)
        try process.run()
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let r = try? LoopbackHTTP.get(port: port, path: "/-/ready"), r.status == 200 { return }
            guard process.isRunning else { break }
            usleep(100_000)
        }
        throw LoopbackHTTP.Failure(description: "prometheus did not become ready: \(log)")
    }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// An instant query's vector as (labels, value) pairs.
    func query(_ promql: String, at time: Double? = nil) throws -> [([String: String], Double)] {
        var path = "/api/v1/query?query=" + promql.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        if let time { path += "&time=" + String(format: "%.3f", time) }
        let r = try LoopbackHTTP.get(port: port, path: path)
        guard r.status == 200,
            let json = try JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any],
            let data = json["data"] as? [String: Any], let result = data["result"] as? [[String: Any]]
        else { throw LoopbackHTTP.Failure(description: "query \(promql): \(r.status) \(r.body)") }
        return result.compactMap { item in
            guard let metric = item["metric"] as? [String: String], let value = item["value"] as? [Any],
                value.count == 2, let text = value[1] as? String, let v = Double(text)
            else { return nil }
            return (metric, v)
        }
    }

    /// Polls `promql` until `condition` holds for its result, or `seconds` pass.
    func waitFor(
        _ promql: String, seconds: Double = 15, _ condition: ([([String: String], Double)]) -> Bool
    ) throws -> [([String: String], Double)] {
        let deadline = Date().addingTimeInterval(seconds)
        var last: [([String: String], Double)] = []
        while Date() < deadline {
            last = try query(promql)
            if condition(last) { return last }
            usleep(200_000)
        }
        throw LoopbackHTTP.Failure(description: "timed out waiting on \(promql); last: \(last)")
    }
}
