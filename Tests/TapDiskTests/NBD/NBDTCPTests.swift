import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The NBD server under test on loopback TCP (`--nbd tcp:127.0.0.1:PORT`), the transport that
/// reaches a guest on another host: qemu-io's patterns through `nbd://127.0.0.1:PORT/`, checked
/// on the image after the server stopped, and `nbdinfo` seeing the same export as over the
/// unix socket.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(
        if: NBDServerProcess.available() && NBDClientTools.have("qemu-io", "nbdinfo"),
        "needs qemu-io (Debian qemu-utils) and nbdinfo (Debian libnbd-bin)"))
struct NBDTCPTests {
    @Test func qemuIOAndNbdinfoOverLoopbackTCP() throws {
        let image = NBDClientTools.temporaryPath("disk.img")
        defer { NBDClientTools.removeTemporary(image) }
        try NBDClientTools.makeSparseImage(image, size: 64 << 20, data: [], seed: 0)
        let server = try NBDServerProcess(image: image, tcp: true)
        let start = MonotonicClock.nanoseconds()
        #expect(server.uri.hasPrefix("nbd://127.0.0.1:"))
        let writes = [
            "write -P 0xa1 0 65536", "write -P 0xb2 \(1 << 20) 4096", "write -P 0xc3 \((64 << 20) - 512) 512",
        ]
        let reads = ["read -P 0xa1 0 65536", "read -P 0xb2 \(1 << 20) 4096", "read -P 0xc3 \((64 << 20) - 512) 512"]
        let through = try NBDQemuToolTests.qemuIO(server.uri, writes + reads)
        #expect(through.status == 0 && !through.output.contains("Pattern verification failed"), "\(through.output)")
        let info = try Shell.run(["nbdinfo", "--json", server.uri])
        #expect(info.status == 0, "\(info.stderr)")
        let export = try JSONParser.parse(info.stdout).objectValue?["exports"]?.arrayValue?.first?.objectValue
        #expect(export?["export-size"]?.uint64Value == 64 << 20, "\(info.stdout)")
        #expect(export?["can_multi_conn"]?.boolValue == true && export?["can_flush"]?.boolValue == true)
        #expect(server.stop() == 0, "\(server.log)")
        let direct = try NBDQemuToolTests.qemuIO(image, reads)
        #expect(direct.status == 0 && !direct.output.contains("Pattern verification failed"), "\(direct.output)")
        print(
            "nbd tcp [\(server.kind.rawValue)] \(server.uri): \(writes.count) writes verified through the export"
                + " and on the image, nbdinfo size and flags; \(NBDQemuToolTests.ms(since: start)) ms")
    }
}
