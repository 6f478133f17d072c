import Foundation
import Glibc
import Testing

@testable import TapDisk

/// A randomized model test through the real server process, driven by libnbd
/// (`scripts/nbd-model.py`, Debian's python3-libnbd): four connections with 16 commands in flight
/// each, reads, writes (some FUA), flushes, trims and write-zeroes at seeded random offsets,
/// checked against a shadow model. The script asserts exactly one completion per command, every
/// read equal to the model, and the export and the image file equal to it at the end; a failed
/// write leaves its range unknown in the model. With tapdiskd, faults injected through its seam
/// (`TAPDISK_FAULTS`, debug builds) must reach the client by name: EIO as EIO, ENOSPC as
/// ENOSPC, and the daemon's counters must agree with what the client saw.
@Suite(
    .serialized, .timeLimit(.minutes(5)),
    .enabled(
        if: NBDServerProcess.available() && NBDClientTools.havePythonLibnbd,
        "needs /usr/bin/python3 with python3-libnbd (Debian python3-libnbd)"))
struct NBDModelTests {
    struct Run {
        var status: Int32
        var summary: JSONObject
        var stderr: String
        var seconds: Double
        func count(_ key: String) -> UInt64 { summary["counts"]?[key]?.uint64Value ?? 0 }
    }

    static func runModel(
        _ server: NBDServerProcess, seed: Int, ops: Int = 4000, allowErrors: [String] = []
    ) throws -> Run {
        let start = MonotonicClock.nanoseconds()
        var argv = [
            NBDClientTools.python, NBDClientTools.script("nbd-model.py"), "--uri", server.uri, "--connections", "4",
            "--depth", "16", "--ops", "\(ops)", "--seed", "\(seed)", "--image", server.image,
        ]
        if !allowErrors.isEmpty { argv += ["--allow-errors", allowErrors.joined(separator: ",")] }
        let r = try Shell.run(argv, timeoutSeconds: 240)
        let line = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
        let summary = (try? JSONParser.parse(line).objectValue) ?? [:]
        return Run(
            status: r.status, summary: summary, stderr: r.stderr,
            seconds: Double(MonotonicClock.nanoseconds() - start) / 1e9)
    }

    /// No faults: every command succeeds and the model holds, for three seeds.
    @Test(arguments: [1, 2, 3])
    func randomizedPipelinedMultiConnectionRunMatchesTheModel(seed: Int) throws {
        let image = NBDClientTools.temporaryPath("disk.img")
        defer { NBDClientTools.removeTemporary(image) }
        try NBDClientTools.makeSparseImage(image, size: 64 << 20, data: [], seed: 0)
        let server = try NBDServerProcess(image: image)
        let run = try Self.runModel(server, seed: seed)
        #expect(run.status == 0, "nbd-model.py exit \(run.status): \(run.stderr.suffix(3000))")
        #expect(run.summary["issued"]?.int64Value == 4000 && run.summary["not-completed-once"]?.int64Value == 0)
        #expect(run.summary["failures"]?.int64Value == 0, "\(run.summary)")
        if let daemon = server.daemon {
            // Every NBD command the engine took is answered in the counters too, none as an error.
            let c = try DaemonTest.expectInvariant(try daemon.client())
            #expect(c["responses-error"] == 0 && c["in-flight"] == 0 && c["held"] == 0, "\(c.values)")
            #expect(c["read-requests"] > 0 && c["write-requests"] > 0 && c["flush-requests"] > 0, "\(c.values)")
        }
        #expect(server.stop() == 0, "\(server.log.suffix(2000))")
        print(
            "nbd model [\(server.kind.rawValue)] seed \(seed): \(run.summary["issued"]?.int64Value ?? 0) commands"
                + " (read \(run.count("read")), write \(run.count("write")), flush \(run.count("flush")),"
                + " trim \(run.count("trim")), zero \(run.count("zero"))) over 4 connections x 16 in flight,"
                + " every one completed once, model held; \(String(format: "%.1f", run.seconds)) s")
    }

    /// tapdiskd only (qemu-nbd has no fault seam): seeded random EIO and ENOSPC on completions,
    /// `--on-nospace report`. The client sees only EIO and ENOSPC, by name; every command still
    /// completes exactly once; the model holds on every range not left unknown by a failure; and
    /// the daemon's error counters equal the failures the client counted.
    @Test(
        .enabled(if: NBDServerProcess.underTest == .tapdiskd, "the fault seam is tapdiskd's (TAPDISK_FAULTS)"),
        arguments: [21, 22])
    func injectedFaultsReachTheClientByNameAndTheModelHolds(seed: Int) throws {
        let image = NBDClientTools.temporaryPath("disk.img")
        defer { NBDClientTools.removeTemporary(image) }
        try NBDClientTools.makeSparseImage(image, size: 64 << 20, data: [], seed: 0)
        let server = try NBDServerProcess(
            image: image, kind: .tapdiskd, arguments: ["--on-nospace", "report", "--on-error", "report"],
            environment: ["TAPDISK_FAULTS": "random:\(seed):eio=20:enospc=20"])
        let daemon = try #require(server.daemon)
        let run = try Self.runModel(server, seed: seed, allowErrors: ["EIO", "ENOSPC"])
        #expect(run.status == 0, "nbd-model.py exit \(run.status): \(run.stderr.suffix(3000))")
        #expect(run.summary["not-completed-once"]?.int64Value == 0 && run.summary["failures"]?.int64Value == 0)
        let counts = run.summary["counts"]?.objectValue ?? [:]
        var byErrno: [String: UInt64] = [:]
        for member in counts where member.key.contains(":") {
            let name = String(member.key.split(separator: ":")[1])
            byErrno[name, default: 0] += member.value.uint64Value ?? 0
        }
        #expect(Set(byErrno.keys).isSubset(of: ["EIO", "ENOSPC"]), "\(counts)")
        #expect((byErrno["EIO"] ?? 0) > 0 && (byErrno["ENOSPC"] ?? 0) > 0, "faults injected but not seen: \(counts)")
        let c = try DaemonTest.expectInvariant(try daemon.client())
        #expect(c["nospace-errors"] == byErrno["ENOSPC"] ?? 0, "daemon \(c.values), client \(counts)")
        #expect(
            c["responses-error"] == (byErrno["EIO"] ?? 0) + (byErrno["ENOSPC"] ?? 0),
            "daemon \(c.values), client \(counts)")
        #expect(server.stop() == 0, "\(server.log.suffix(2000))")
        print(
            "nbd model [tapdiskd, faults random:\(seed):eio=20:enospc=20] \(run.summary["issued"]?.int64Value ?? 0)"
                + " commands: client saw EIO \(byErrno["EIO"] ?? 0), ENOSPC \(byErrno["ENOSPC"] ?? 0) (daemon"
                + " nospace-errors \(c["nospace-errors"]), responses-error \(c["responses-error"])),"
                + " unknown bytes \(run.summary["unknown-bytes"]?.int64Value ?? 0), model held;"
                + " \(String(format: "%.1f", run.seconds)) s")
    }
}
