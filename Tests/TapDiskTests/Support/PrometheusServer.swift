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

/// Minimal HTTP/1.1 GETs to loopback servers the tests started (Prometheus, the exporter).
enum LoopbackHTTP {
    struct Failure: Error, CustomStringConvertible { var description: String }

    /// A port free at the moment of asking (bound to 0, read, released).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0
            }
        }
        guard ok else { throw Failure(description: "no free port: errno \(errno)") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    static func get(port: Int, path: String, accept: String? = nil, timeoutSeconds: Int = 10) throws -> (
        status: Int, headers: String, body: String
    ) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard connected else { throw Failure(description: "connect 127.0.0.1:\(port): errno \(errno)") }
        var request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
        if let accept { request += "Accept: \(accept)\r\n" }
        request += "\r\n"
        _ = request.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            data += buffer[0..<n]
        }
        let text = String(decoding: data, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { throw Failure(description: "no HTTP response") }
        let head = String(text[..<split.lowerBound])
        var body = String(text[split.upperBound...])
        let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
        if head.lowercased().contains("transfer-encoding: chunked") { body = dechunk(body) }
        return (status, head, body)
    }

    private static func dechunk(_ s: String) -> String {
        var rest = Substring(s)
        var out = ""
        while let lineEnd = rest.range(of: "\r\n"), let size = Int(rest[..<lineEnd.lowerBound], radix: 16), size > 0 {
            let start = lineEnd.upperBound
            let bytes = Array(rest[start...].utf8)
            out += String(decoding: bytes.prefix(size), as: UTF8.self)
            rest = Substring(String(decoding: bytes.dropFirst(size + 2), as: UTF8.self))
        }
        return out
    }
}
