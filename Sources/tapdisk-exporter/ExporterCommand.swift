import ArgumentParser
import Hummingbird
import TapDiskMetrics

/// `tapdisk-exporter`: serves every local tapdiskd's metrics to Prometheus over HTTP.
///
/// A separate process so the per-disk daemon links no HTTP stack: each `GET /metrics` asks
/// every daemon's control socket (`info`, `status`, `stats`) at once, each within
/// `--timeout-ms`, and renders the answers; nothing is cached between scrapes.
@main
struct ExporterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tapdisk-exporter",
        abstract: "Prometheus exporter for the tapdiskd daemons of this host.",
        discussion: """
            GET /metrics answers in the Prometheus text format, or in OpenMetrics 1.0.0 when the \
            Accept header asks for application/openmetrics-text. A daemon that does not answer in \
            time is reported as tapdiskd_up{disk=...} 0.
            """)

    @Option(help: "Address and port to serve HTTP on (ADDR:PORT; [::1]:PORT for IPv6).")
    var listen: String = "127.0.0.1:9477"

    @Option(
        name: .customLong("sockets"),
        help:
            "Control sockets: a directory (its *.sock) or a glob; repeatable. Default: /run/tapdisk/ and /run/tapdiskd/."
    )
    var sockets: [String] = []

    @Option(name: .customLong("timeout-ms"), help: "Per-daemon deadline of one scrape, in milliseconds.")
    var timeoutMilliseconds: Int32 = 500

    func validate() throws {
        guard ListenAddress(listen) != nil else { throw ValidationError("--listen wants ADDR:PORT, not '\(listen)'") }
        guard (1...60_000).contains(timeoutMilliseconds) else {
            throw ValidationError("--timeout-ms must be 1...60000")
        }
    }

    func run() async throws {
        let address = ListenAddress(listen)!
        let scraper = Scraper(
            sockets: SocketSet(patterns: sockets.isEmpty ? ["/run/tapdisk/", "/run/tapdiskd/"] : sockets),
            timeoutMilliseconds: timeoutMilliseconds)
        let router = Router()
        router.get("/metrics") { request, _ -> Response in
            let format = ExpositionFormat(accept: request.headers[values: .accept].joined(separator: ","))
            let body = await scraper.render(format)
            return Response(
                status: .ok, headers: [.contentType: format.contentType],
                body: ResponseBody(byteBuffer: ByteBuffer(string: body)))
        }
        router.get("/") { _, _ in "tapdisk-exporter: metrics at /metrics\n" }
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(address.host, port: address.port), serverName: "tapdisk-exporter"))
        try await app.runService()
    }
}

/// `ADDR:PORT`, with IPv6 addresses in brackets.
struct ListenAddress {
    var host: String
    var port: Int

    init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (0...65535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self.host = host
        self.port = port
    }
}
