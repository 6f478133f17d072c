import Foundation
import Glibc
import Testing

@testable import TapDisk

/// fio's `nbd` engine (libnbd underneath) against the NBD server under test: random writes at
/// QD32 with a crc32c in every block, then fio reads every block back and verifies it.
@Suite(
    .serialized, .timeLimit(.minutes(3)),
    .enabled(
        if: NBDServerProcess.available() && NBDClientTools.fioHasNBDEngine,
        "needs fio built with its nbd engine (Debian fio)"))
struct NBDFioVerifyTests {
    /// Per block size: fio exits 0, its JSON reports no error, and the verify pass read back
    /// every byte written (so every block was checked), with none failing.
    @Test(arguments: ["4k", "64k", "512-128k"])
    func fioRandomWritesAtQD32VerifyWithCRC32C(blockSize: String) throws {
        let image = NBDClientTools.temporaryPath("disk.img")
        defer { NBDClientTools.removeTemporary(image) }
        try NBDClientTools.makeSparseImage(image, size: 64 << 20, data: [], seed: 0)
        let server = try NBDServerProcess(image: image)
        let output = (image as NSString).deletingLastPathComponent + "/fio.json"
        let start = MonotonicClock.nanoseconds()
        var argv = [
            "fio", "--name=verify", "--ioengine=nbd", "--uri=\(server.uri)", "--rw=randwrite", "--iodepth=32",
            "--size=32M", "--verify=crc32c", "--do_verify=1", "--verify_state_save=0", "--randseed=7",
            "--output-format=json",
            "--output=\(output)",
        ]
        argv.append(blockSize.contains("-") ? "--bsrange=\(blockSize)" : "--bs=\(blockSize)")
        let r = try Shell.run(argv, timeoutSeconds: 150)
        #expect(r.status == 0, "fio exit \(r.status): \(r.stderr)")
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        // fio may print "fio: connected to NBD server" ahead of the JSON.
        let json = text.firstIndex(of: "{").map { String(text[$0...]) } ?? text
        let job = try #require(
            try JSONParser.parse(json).objectValue?["jobs"]?.arrayValue?.first?.objectValue, "\(text)")
        let written = job["write"]?["io_bytes"]?.uint64Value ?? 0
        let verified = job["read"]?["io_bytes"]?.uint64Value ?? 0
        #expect(job["error"]?.int64Value == 0, "fio job error \(job["error"] ?? .null): \(r.stderr)")
        #expect(written >= 32 << 20 && verified == written, "written \(written), read back for verify \(verified)")
        #expect(!r.stderr.contains("verify:") && !r.stdout.contains("bad magic"), "\(r.stderr)")
        #expect(server.stop() == 0, "\(server.log)")
        print(
            "nbd fio verify [\(server.kind.rawValue)] bs \(blockSize) QD32: \(written) bytes written,"
                + " \(verified) read back, 0 verify errors; \(NBDQemuToolTests.ms(since: start)) ms")
    }
}
