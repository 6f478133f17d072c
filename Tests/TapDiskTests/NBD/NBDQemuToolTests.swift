import Foundation
import Glibc
import Testing

@testable import TapDisk

/// QEMU's own NBD client (qemu-io, qemu-img, from Debian's qemu-utils) against the NBD server
/// under test (`NBDServerProcess.underTest`): data written and read through
/// `nbd+unix:///?socket=…` with qemu-io's patterns, the export compared byte for byte with the
/// image, its allocation as `qemu-img map` sees it equal to the image's `SEEK_DATA` layout, and a
/// `qemu-img convert` out of the export giving an identical sparse copy.
@Suite(
    .serialized, .timeLimit(.minutes(3)),
    .enabled(
        if: NBDServerProcess.available() && NBDClientTools.have("qemu-img", "qemu-io"),
        "needs qemu-img and qemu-io (Debian qemu-utils)"))
struct NBDQemuToolTests {
    /// 64 MiB with data at 1 MiB + 2 MiB, 20 MiB + 64 KiB, 37 MiB + 4 KiB and the last 1 MiB:
    /// holes at both ends of extents, a lone small extent, data up to the end of the device.
    static let size: UInt64 = 64 << 20
    static let dataRanges: [(UInt64, UInt64)] = [
        (1 << 20, 2 << 20), (20 << 20, 64 << 10), (37 << 20, 4 << 10), (63 << 20, 1 << 20),
    ]

    /// A fresh sparse image with the known layout, served; removed with its directory by `defer`.
    static func servedImage(seed: UInt64) throws -> (
        image: String, layout: [NBDClientTools.Extent], server: NBDServerProcess
    ) {
        let image = NBDClientTools.temporaryPath("disk.img")
        do {
            let layout = try NBDClientTools.makeSparseImage(image, size: size, data: dataRanges, seed: seed)
            // The filesystem must keep the layout exactly, or the test would compare against a guess.
            #expect(try NBDClientTools.seekLayout(image) == layout)
            return (image, layout, try NBDServerProcess(image: image))
        } catch {
            NBDClientTools.removeTemporary(image)
            throw error
        }
    }

    /// qemu-io writes patterns — 4 KiB aligned, sector aligned with odd lengths, byte-unaligned
    /// (qemu's client reads, modifies and writes whole blocks of the advertised minimum), 4 MiB,
    /// the device's last sector, write-zeroes — and reads each back with pattern verification
    /// through the export. After the server stops, qemu-io on the image file itself verifies the
    /// same patterns: what the client was told is on disk.
    @Test func qemuIOPatternsRoundTripThroughTheExport() throws {
        let image = NBDClientTools.temporaryPath("disk.img")
        defer { NBDClientTools.removeTemporary(image) }
        try NBDClientTools.makeSparseImage(image, size: Self.size, data: [], seed: 1)
        let server = try NBDServerProcess(image: image)
        let start = MonotonicClock.nanoseconds()
        // (pattern, offset, length); later ones never overlap earlier ones.
        let writes: [(Int, UInt64, UInt64)] = [
            (0x11, 0, 4096), (0x22, 8192, 512), (0x33, 1 << 20, 65536 + 1536), (0x44, (2 << 20) + 1000, 3000),
            (0x55, 4 << 20, 4 << 20), (0x66, Self.size - 512, 512), (0x77, (10 << 20) + 7, 1),
        ]
        var commands: [String] = []
        for (p, offset, length) in writes { commands.append("write -P \(p) \(offset) \(length)") }
        commands.append("write -z \(12 << 20) \(1 << 20)")
        commands.append("write -P 0x88 \(16 << 20) 65536")
        commands.append("write -z \(16 << 20) 4096")
        var reads: [String] = []
        for (p, offset, length) in writes { reads.append("read -P \(p) \(offset) \(length)") }
        reads.append("read -P 0 \(12 << 20) \(1 << 20)")
        reads.append("read -P 0 \(16 << 20) 4096")
        reads.append("read -P 0x88 \((16 << 20) + 4096) \(65536 - 4096)")
        // Bytes next to the unaligned writes were not touched by the read-modify-write.
        reads.append("read -P 0 \((2 << 20) + 512) 488")
        reads.append("read -P 0 \((10 << 20)) 7")
        let through = try Self.qemuIO(server.uri, commands + reads)
        #expect(through.status == 0, "\(through.output)")
        #expect(!through.output.contains("Pattern verification failed"), "\(through.output)")
        #expect(through.output.components(separatedBy: "wrote ").count - 1 == commands.count, "\(through.output)")
        #expect(server.stop() == 0, "\(server.log)")
        let direct = try Self.qemuIO(image, reads, format: "raw")
        #expect(direct.status == 0 && !direct.output.contains("Pattern verification failed"), "\(direct.output)")
        print(
            "nbd qemu-io [\(server.kind.rawValue)]: \(commands.count) writes, \(reads.count) verified reads through"
                + " the export and on the image; \(Self.ms(since: start)) ms")
    }

    /// `qemu-img compare` finds the export identical to the image; after one byte is changed
    /// through the export it finds the difference at that offset (the check can fail).
    @Test func qemuImgCompareFindsTheExportIdenticalToTheImage() throws {
        let (image, _, server) = try Self.servedImage(seed: 2)
        defer { NBDClientTools.removeTemporary(image) }
        let start = MonotonicClock.nanoseconds()
        let original = image + ".orig"
        try Shell.check(["cp", "--sparse=always", image, original])
        let same = try Shell.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", original, server.uri])
        #expect(same.status == 0 && same.stdout.contains("Images are identical"), "\(same.stdout)\(same.stderr)")
        let changedAt: UInt64 = (20 << 20) + 4097
        let w = try Self.qemuIO(server.uri, ["write -P 0x00 \(changedAt) 1"])
        #expect(w.status == 0, "\(w.output)")
        let differ = try Shell.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", original, server.uri])
        #expect(differ.status == 1, "\(differ.stdout)\(differ.stderr)")
        // qemu-img compare names the sector holding the first difference.
        #expect(differ.stdout.contains("Content mismatch at offset \(changedAt / 512 * 512)!"), "\(differ.stdout)")
        #expect(server.stop() == 0, "\(server.log)")
        print(
            "nbd qemu-img compare [\(server.kind.rawValue)]: identical, then mismatch found at \(changedAt); \(Self.ms(since: start)) ms"
        )
    }

    /// `qemu-img map --output=json` through the export lists data exactly where the image has
    /// data and holes where it has holes (the server's BLOCK_STATUS from SEEK_DATA/SEEK_HOLE).
    @Test func qemuImgMapEqualsTheImageSeekLayout() throws {
        let (image, layout, server) = try Self.servedImage(seed: 3)
        defer { NBDClientTools.removeTemporary(image) }
        let start = MonotonicClock.nanoseconds()
        let map = try Shell.run(["qemu-img", "map", "--output=json", "-f", "raw", server.uri])
        #expect(map.status == 0, "\(map.stderr)")
        let seen = try NBDClientTools.qemuImgMap(map.stdout)
        #expect(seen == layout, "qemu-img map: \(seen)\nSEEK layout: \(layout)")
        #expect(server.stop() == 0, "\(server.log)")
        print(
            "nbd qemu-img map [\(server.kind.rawValue)]: \(seen.count) extents equal the SEEK layout; \(Self.ms(since: start)) ms"
        )
    }

    /// `qemu-img convert -m 4 -W` (4 parallel coroutines, out-of-order writes) from the export to
    /// a new file: same bytes, and the same allocation (holes stayed holes).
    @Test func qemuImgConvertFromTheExportGivesAnIdenticalSparseCopy() throws {
        let (image, layout, server) = try Self.servedImage(seed: 4)
        defer { NBDClientTools.removeTemporary(image) }
        let start = MonotonicClock.nanoseconds()
        let copy = image + ".copy"
        let r = try Shell.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "raw", "-m", "4", "-W", server.uri, copy], timeoutSeconds: 120)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try NBDClientTools.sameContent(image, copy), "the copy's bytes differ from the image's")
        // qemu-img's file driver allocates a new raw target's first block itself (it probes the
        // O_DIRECT alignment there later), whatever the source holds: that block is not compared.
        let copied = Self.ignoringFirstBlock(try NBDClientTools.seekLayout(copy))
        #expect(copied == Self.ignoringFirstBlock(layout), "copy: \(copied)\nimage: \(layout)")
        #expect(server.stop() == 0, "\(server.log)")
        print(
            "nbd qemu-img convert [\(server.kind.rawValue)]: identical sparse copy (\(copied.filter(\.data).count) data extents); \(Self.ms(since: start)) ms"
        )
    }

    // MARK: - Helpers

    /// qemu-io with one `-c` per command; stdout and stderr together.
    static func qemuIO(_ target: String, _ commands: [String], format: String = "raw") throws -> (
        status: Int32, output: String
    ) {
        var argv = ["qemu-io", "-f", format]
        for c in commands { argv += ["-c", c] }
        let r = try Shell.run(argv + [target], timeoutSeconds: 120)
        return (r.status, r.stdout + r.stderr)
    }

    /// The layout with [0, 4096) called a hole.
    static func ignoringFirstBlock(_ extents: [NBDClientTools.Extent]) -> [NBDClientTools.Extent] {
        var out: [NBDClientTools.Extent] = [.init(offset: 0, length: 4096, data: false)]
        for e in extents where e.offset + e.length > 4096 {
            let start = max(e.offset, 4096)
            out.append(.init(offset: start, length: e.offset + e.length - start, data: e.data))
        }
        return NBDClientTools.merged(out)
    }

    static func ms(since start: UInt64) -> Int { Int((MonotonicClock.nanoseconds() - start) / 1_000_000) }
}
