import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The real `tapdiskd --vhost-user-blk SOCK` over a patterned 16 MiB image, with the checks the
/// hostile-front-end suites make after every case: the process is alive, `status` answers, the
/// state returns to idle after a disconnect, and a fresh front-end is served correctly.
final class VhostUserTestDaemon {
    let process: DaemonProcess
    let vhostSocket: String
    let imagePath: String
    static let imageBytes = 16 << 20
    /// The first `patternBytes` of the image hold `pattern(offset)`; the rest is a hole.
    static let patternBytes = 1 << 20

    init(arguments: [String] = [], environment: [String: String] = [:]) throws {
        let dir = DaemonProcess.makeDirectory()
        imagePath = dir + "/image"
        vhostSocket = dir + "/vhost.sock"
        do {
            try Self.writeImage(imagePath)
            process = try DaemonProcess(
                image: imagePath, arguments: ["--vhost-user-blk", vhostSocket] + arguments, directory: dir,
                environment: environment.isEmpty
                    ? nil : ProcessInfo.processInfo.environment.merging(environment) { _, new in new })
        } catch {
            try? FileManager.default.removeItem(atPath: dir)
            throw error
        }
    }

    /// A byte that differs between neighbouring sectors and within one.
    static func pattern(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: (offset >> 9) &* 131 &+ offset % 251) }

    static func pattern(sector: UInt64, bytes: Int) -> [UInt8] {
        (0..<bytes).map { pattern(Int(sector) * 512 + $0) }
    }

    private static func writeImage(_ path: String) throws {
        let fd = try FileDescriptor.open(path, flags: O_RDWR | O_CREAT)
        let data = (0..<patternBytes).map(pattern)
        let n = data.withUnsafeBytes { pwrite(fd.rawValue, $0.baseAddress, $0.count, 0) }
        guard n == patternBytes, ftruncate(fd.rawValue, off_t(imageBytes)) == 0 else { throw Errno.current }
    }

    /// The image's bytes as the host sees them.
    func imageBytes(sector: UInt64, count: Int) -> [UInt8] {
        guard let fd = try? FileDescriptor.open(imagePath, flags: O_RDONLY) else { return [] }
        var b = [UInt8](repeating: 0, count: count)
        let n = b.withUnsafeMutableBytes { pread(fd.rawValue, $0.baseAddress, count, off_t(sector * 512)) }
        return n == count ? b : []
    }

    var pid: Int32 { process.process.processIdentifier }

    /// The daemon's open fds with `liveConnections` control connections (and no front-end)
    /// open, whether or not it has yet processed the close of earlier checks' connections.
    func baselineFDCount(liveConnections: Int = 0) -> Int {
        DaemonTest.baselineFDCount(process, liveConnections: liveConnections)
    }

    /// Expects no more fds than `baseline` (taken with `baselineFDCount` while idle).
    func expectNoLeakedFDs(baseline: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        _ = waitForState("idle")
        let ok = DaemonTest.waitUntil(seconds: 3) { DaemonTest.fdCount(pid: pid) <= baseline }
        #expect(ok, "daemon fds: \(DaemonTest.fdCount(pid: pid)), \(baseline) before", sourceLocation: sourceLocation)
    }
    var log: String { process.log }

    /// `status.state`, or nil when the daemon does not answer within 3 s.
    func state() -> String? {
        guard let c = try? process.client(), let r = try? c.call("status", timeoutMilliseconds: 3000) else {
            return nil
        }
        return r["state"]?.stringValue
    }

    /// The process runs and its control socket answers.
    var isAlive: Bool { process.process.isRunning && state() != nil }

    /// Waits until `status` says `name` (false after `seconds`).
    @discardableResult
    func waitForState(_ name: String, seconds: Double = 10) -> Bool {
        DaemonTest.waitUntil(seconds: seconds) { state() == name }
    }

    /// A control connection subscribed to events.
    func subscribe() throws -> ControlClient {
        let c = try process.client()
        try c.call("subscribe")
        return c
    }

    /// A front-end connected to the vhost-user socket (nothing negotiated yet).
    func frontend(queueSize: Int = 128) throws -> VhostUserTestFrontend {
        try VhostUserTestFrontend(socketPath: vhostSocket, queueSize: queueSize)
    }

    /// A front-end through the whole set-up.
    func started(queueSize: Int = 128) throws -> VhostUserTestFrontend {
        let f = try frontend(queueSize: queueSize)
        try f.start()
        return f
    }

    /// Whether a violation was reported: a `frontend-violation` event on `events` within
    /// `seconds`, or (for a daemon that only logs it) the log line.
    func violationReported(on events: ControlClient, seconds: Double = 5) -> Bool {
        violation(on: events, seconds: seconds) != nil
    }

    /// The reported violation's message (see `violationReported`), nil when none came.
    func violation(on events: ControlClient, seconds: Double = 5) -> String? {
        if let e = try? DaemonTest.nextEvent(events, named: "frontend-violation", seconds: seconds) {
            return e["message"]?.stringValue ?? "(no message)"
        }
        return log.contains("frontend violation") || log.contains("frontend-violation") ? "(log only)" : nil
    }

    /// After a front-end went away: back to idle, then a new front-end reads the patterned
    /// sectors and writes-and-reads one sector correctly. Records an issue (with `what`) when
    /// anything fails; returns whether all held.
    @discardableResult
    func expectRecovery(
        _ what: String, patternIntact: Bool = true, sourceLocation: SourceLocation = #_sourceLocation
    ) -> Bool {
        guard process.process.isRunning else {
            Issue.record("\(what): the daemon died: \(log.suffix(2000))", sourceLocation: sourceLocation)
            return false
        }
        guard waitForState("idle") else {
            Issue.record(
                "\(what): not idle after the disconnect (\(state() ?? "no answer"))", sourceLocation: sourceLocation)
            return false
        }
        do {
            let f = try started()
            defer { f.disconnect() }
            return Self.expectServes(f, what, patternIntact: patternIntact, sourceLocation: sourceLocation)
        } catch {
            Issue.record("\(what): a fresh front-end failed: \(error)", sourceLocation: sourceLocation)
            return false
        }
    }

    /// A READ of patterned sectors and a WRITE + READ of sector 100 through `f`, checked byte for
    /// byte; the proof that a front-end is really served (else a refusal proves nothing).
    /// `patternIntact: false` after random writes may have touched the pattern.
    @discardableResult
    static func expectServes(
        _ f: VhostUserTestFrontend, _ what: String = "", seed: UInt8 = 1, patternIntact: Bool = true,
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> Bool {
        let before = f.used.count
        guard let (status, data) = f.read(sector: 8, bytes: 8192, first: 0, dataOffset: 0x2_0000) else {
            Issue.record("\(what): no answer to a valid READ", sourceLocation: sourceLocation)
            return false
        }
        let written = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) }
        let writeStatus = f.write(sector: 100, written, first: 3, dataOffset: 0x4_0000)
        let back = f.read(sector: 100, bytes: 4096, first: 6, dataOffset: 0x6_0000)
        let ok =
            status == VirtioBlkStatus.ok.rawValue && (!patternIntact || data == pattern(sector: 8, bytes: 8192))
            && writeStatus == VirtioBlkStatus.ok.rawValue && back?.0 == VirtioBlkStatus.ok.rawValue
            && back?.1 == written && f.used.count == before + 3
        if !ok {
            Issue.record(
                "\(what): valid requests failed: read \(status) match \(data == pattern(sector: 8, bytes: 8192)), write \(writeStatus.map(String.init) ?? "none"), read-back \(back.map { "\($0.0) match \($0.1 == written)" } ?? "none")",
                sourceLocation: sourceLocation)
        }
        return ok
    }
}
