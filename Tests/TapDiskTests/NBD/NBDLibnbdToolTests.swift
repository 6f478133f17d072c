import Foundation
import Glibc
import Testing

@testable import TapDisk

/// libnbd's tools (Debian's libnbd-bin) against the NBD server under test: `nbdinfo` sees the
/// export's size, block sizes, flags and allocation map; `nbdcopy` copies it over several
/// connections both ways and keeps it sparse.
@Suite(
    .serialized, .timeLimit(.minutes(3)),
    .enabled(
        if: NBDServerProcess.available() && NBDClientTools.have("nbdinfo", "nbdcopy"),
        "needs nbdinfo and nbdcopy (Debian libnbd-bin)"))
struct NBDLibnbdToolTests {
    /// `nbdinfo --json`: the size, the block sizes (tapdiskd: minimum the image's logical sector
    /// size, preferred 4096, maximum 32 MiB), the flags the front promises (flush, FUA, trim,
    /// zero, multi-conn, structured replies, `base:allocation`). `nbdinfo --map`: the image's
    /// SEEK_DATA layout exactly.
    @Test func nbdinfoSeesSizeBlockSizesFlagsAndTheImageLayout() throws {
        let (image, layout, server) = try NBDQemuToolTests.servedImage(seed: 11)
        defer { NBDClientTools.removeTemporary(image) }
        let start = MonotonicClock.nanoseconds()
        let info = try Shell.run(["nbdinfo", "--json", server.uri])
        #expect(info.status == 0, "\(info.stderr)")
        let root = try #require(try JSONParser.parse(info.stdout).objectValue)
        #expect(root["protocol"]?.stringValue == "newstyle-fixed" && root["structured"]?.boolValue == true)
        let export = try #require(root["exports"]?.arrayValue?.first?.objectValue, "\(info.stdout)")
        // Connected with the empty name; tapdiskd answers with its export's own name (the image
        // file's, docs/nbd.md), qemu-nbd with the empty one.
        let name = server.kind == .tapdiskd ? (image as NSString).lastPathComponent : ""
        #expect(export["export-name"]?.stringValue == name, "\(info.stdout)")
        #expect(export["export-size"]?.uint64Value == NBDQemuToolTests.size)
        for flag in ["can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn"] {
            #expect(export[flag]?.boolValue == true, "\(flag): \(info.stdout)")
        }
        #expect(export["is_read_only"]?.boolValue == false)
        #expect(export["contexts"]?.arrayValue?.contains(.string("base:allocation")) == true, "\(info.stdout)")
        let minimum = export["block_size_minimum"]?.uint64Value
        if server.kind == .qemuNBD { #expect(minimum == 1) }
        #expect(export["block_size_preferred"]?.uint64Value == 4096)
        #expect(export["block_size_maximum"]?.uint64Value == 32 << 20)

        let map = try Shell.run(["nbdinfo", "--map", "--json", server.uri])
        #expect(map.status == 0, "\(map.stderr)")
        let seen = try NBDClientTools.nbdinfoMap(map.stdout)
        #expect(seen == layout, "nbdinfo --map: \(seen)\nSEEK layout: \(layout)")
        #expect(server.stop() == 0, "\(server.log)")
        if server.kind == .tapdiskd {
            // The daemon holds the image's lock while it runs: its geometry is read afterwards.
            let sector = try Image(path: image).geometry.sectorSize
            #expect(minimum == UInt64(sector), "the image's logical sector size is \(sector)")
        }
        print(
            "nbd nbdinfo [\(server.kind.rawValue)]: size \(export["export-size"]?.uint64Value ?? 0), block sizes"
                + " \(minimum ?? 0)/\(export["block_size_preferred"]?.uint64Value ?? 0)/\(export["block_size_maximum"]?.uint64Value ?? 0),"
                + " map \(seen.count) extents equal the SEEK layout; \(NBDQemuToolTests.ms(since: start)) ms")
    }

    /// `nbdcopy --connections=4` out of the export to a file: the same bytes and the same
    /// allocation. Then into a fresh export (`--destination-is-zero`, so holes are skipped) from
    /// that file: the served image ends up with the same bytes and the same allocation too.
    @Test func nbdcopyOverFourConnectionsKeepsContentAndAllocationBothWays() throws {
        let (image, layout, server) = try NBDQemuToolTests.servedImage(seed: 12)
        defer { NBDClientTools.removeTemporary(image) }
        let start = MonotonicClock.nanoseconds()
        let copy = image + ".copy"
        let out = try Shell.run(
            ["nbdcopy", "--connections=4", "--requests=16", server.uri, copy], timeoutSeconds: 120)
        #expect(out.status == 0, "\(out.stderr)")
        #expect(try NBDClientTools.sameContent(image, copy))
        #expect(try NBDClientTools.seekLayout(copy) == layout)
        #expect(server.stop() == 0, "\(server.log)")

        let target = image + ".target"
        try NBDClientTools.makeSparseImage(target, size: NBDQemuToolTests.size, data: [], seed: 0)
        let into = try NBDServerProcess(image: target)
        let back = try Shell.run(
            ["nbdcopy", "--connections=4", "--requests=16", "--destination-is-zero", copy, into.uri],
            timeoutSeconds: 120)
        #expect(back.status == 0, "\(back.stderr)")
        #expect(into.stop() == 0, "\(into.log)")
        #expect(try NBDClientTools.sameContent(image, target), "the export written by nbdcopy differs")
        let written = try NBDClientTools.seekLayout(target)
        #expect(written == layout, "served image after nbdcopy: \(written)\nsource: \(layout)")
        print(
            "nbd nbdcopy [\(server.kind.rawValue)]: 4 connections out and in, identical bytes and"
                + " allocation (\(layout.filter(\.data).count) data extents); \(NBDQemuToolTests.ms(since: start)) ms")
    }
}
