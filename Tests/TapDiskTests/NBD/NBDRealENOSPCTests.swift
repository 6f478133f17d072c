import Foundation
import Glibc
import Testing

@testable import TapDisk

/// A real ENOSPC, not an injected one: a 64 MiB sparse image on a 16 MiB loop-mounted ext4 that
/// another file has nearly filled. A 4 MiB write through NBD cannot be stored; libnbd must see
/// the failure as ENOSPC by name (NBD_ENOSPC on the wire, what lets QEMU apply `werror=enospc`),
/// not as a generic EIO. Once the filler is deleted the same write succeeds on the same
/// connection and reads back.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(
        if: LoopFilesystem.isRoot && NBDServerProcess.available() && NBDClientTools.havePythonLibnbd,
        "needs root (loop mounts) and /usr/bin/python3 with python3-libnbd (Debian python3-libnbd)"))
struct NBDRealENOSPCTests {
    /// Writes 4 MiB at 8 MiB, prints the errno name (or OK); waits for a line on stdin (the test
    /// frees space meanwhile); writes again, reads back, prints OK or the errno name; all on one
    /// connection.
    static let client = """
        import errno, sys, nbd
        h = nbd.NBD()
        h.connect_uri(sys.argv[1])
        data = bytes(range(256)) * (4 * 1024 * 1024 // 256)
        def attempt():
            try:
                h.pwrite(data, 8 << 20)
                h.flush()
                return "OK" if h.pread(len(data), 8 << 20) == data else "MISMATCH"
            except nbd.Error as e:
                # python3-libnbd gives the errno's name; older bindings gave the number.
                return e.errno if isinstance(e.errno, str) else errno.errorcode.get(e.errno or 0, "errno=%s" % e.errno)
        print("FIRST", attempt(), flush=True)
        sys.stdin.readline()
        print("SECOND", attempt(), flush=True)
        h.shutdown()

        """

    @Test func aWriteBeyondFreeSpaceFailsWithENOSPCByNameThenSucceedsOnceSpaceIsFreed() throws {
        let fs = try LoopFilesystem(sizeMiB: 16)
        defer { fs.cleanup() }
        let image = fs.path("disk.img")
        try NBDClientTools.makeSparseImage(image, size: 64 << 20, data: [], seed: 0)
        let free = try fs.fill(leaving: 1 << 20)
        let server = try NBDServerProcess(image: image, arguments: ["--on-nospace", "report"])
        defer { server.forceStop() }
        let start = MonotonicClock.nanoseconds()

        let process = Process()
        process.executableURL = URL(fileURLWithPath: NBDClientTools.python)
        process.arguments = ["-c", Self.client, server.uri]
        let input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let first = Self.readLine(output.fileHandleForReading)
        #expect(first == "FIRST ENOSPC", "with \(free) bytes free: \(first)")
        fs.removeFiller()
        input.fileHandleForWriting.write("go\n".data(using: .utf8)!)
        let second = Self.readLine(output.fileHandleForReading)
        #expect(second == "SECOND OK", "after freeing space: \(second)")
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        if let daemon = server.daemon {
            let c = try DaemonTest.stats(try daemon.client())
            #expect(c["nospace-errors"] > 0, "\(c.values)")
        }
        #expect(server.stop() == 0, "\(server.log.suffix(2000))")
        print(
            "nbd real ENOSPC [\(server.kind.rawValue)]: \(free) bytes free, 4 MiB write -> \(first);"
                + " filler deleted -> \(second); \(NBDQemuToolTests.ms(since: start)) ms")
    }

    /// `--on-nospace pause` over NBD: the same write is held, not answered, while the filesystem
    /// is full (the disk pauses, `held` > 0, the client has no reply yet); once the filler is
    /// deleted the daemon resumes by itself and the client's one write completes OK and reads
    /// back. No error ever reaches the client.
    @Test(.enabled(if: NBDServerProcess.underTest == .tapdiskd, "the pause policy is tapdiskd's"))
    func underThePausePolicyTheWriteIsHeldThenLandsOnceSpaceIsFreed() throws {
        let fs = try LoopFilesystem(sizeMiB: 16)
        defer { fs.cleanup() }
        let image = fs.path("disk.img")
        try NBDClientTools.makeSparseImage(image, size: 64 << 20, data: [], seed: 0)
        _ = try fs.fill(leaving: 1 << 20)
        let server = try NBDServerProcess(
            image: image, arguments: ["--on-nospace", "pause", "--pause-timeout", "0"])
        defer { server.forceStop() }
        let control = try #require(try server.daemon?.client())
        let once = Self.client.replacingOccurrences(
            of:
                "print(\"FIRST\", attempt(), flush=True)\nsys.stdin.readline()\nprint(\"SECOND\", attempt(), flush=True)",
            with: "print(\"FIRST\", attempt(), flush=True)")
        #expect(once != Self.client)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: NBDClientTools.python)
        process.arguments = ["-c", once, server.uri]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        var status: JSONObject = [:]
        #expect(
            DaemonTest.waitUntil(seconds: 30) {
                status = (try? control.call("status")) ?? [:]
                return status["state"] == .string("paused") && (status["held"]?.int64Value ?? 0) > 0
            }, "the disk did not pause with writes held: \(status)")
        var p = pollfd(fd: output.fileHandleForReading.fileDescriptor, events: Int16(POLLIN), revents: 0)
        #expect(poll(&p, 1, 0) == 0, "the client got an answer while its write was held")
        fs.removeFiller()
        let first = Self.readLine(output.fileHandleForReading)
        #expect(first == "FIRST OK", "after freeing space: \(first)")
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let c = try DaemonTest.stats(control)
        #expect(c["resubmitted-requests"] > 0 && c["responses-error"] == 0, "\(c.values)")
        #expect(server.stop() == 0, "\(server.log.suffix(2000))")
    }

    /// One line (without the newline) from the client, or what it printed before dying.
    static func readLine(_ handle: FileHandle) -> String {
        var bytes: [UInt8] = []
        while true {
            let d = handle.readData(ofLength: 1)
            guard let b = d.first else { break }
            if b == UInt8(ascii: "\n") { break }
            bytes.append(b)
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
