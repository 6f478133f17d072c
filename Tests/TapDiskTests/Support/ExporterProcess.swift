import Foundation
import Glibc

/// The real `tapdisk-exporter` binary (built next to `tapdiskd`), serving on a free loopback port.
final class ExporterProcess {
    let process = Process()
    let port: Int
    let logPath: String

    static var binary: String {
        URL(fileURLWithPath: DaemonProcess.binary).deletingLastPathComponent().appendingPathComponent(
            "tapdisk-exporter"
        ).path
    }

    init(sockets: [String], timeoutMilliseconds: Int = 300) throws {
        port = try LoopbackHTTP.freePort()
        logPath = DaemonProcess.makeDirectory() + "/exporter.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments =
            ["--listen", "127.0.0.1:\(port)", "--timeout-ms", "\(timeoutMilliseconds)"]
            + sockets.flatMap { ["--sockets", $0] }
        process.standardOutput = FileHandle(forWritingAtPath: logPath)
        process.standardError = FileHandle(forWritingAtPath: logPath)
        try process.run()
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline && process.isRunning {
            if let r = try? LoopbackHTTP.get(port: port, path: "/metrics"), r.status == 200 { return }
            usleep(50_000)
        }
        throw LoopbackHTTP.Failure(description: "tapdisk-exporter did not serve /metrics: \(logPath)")
    }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }
}
