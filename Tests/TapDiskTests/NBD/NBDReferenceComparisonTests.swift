import Foundation
import Glibc
import Testing

@testable import TapDisk

/// tapdiskd next to qemu-nbd, the reference server, on two copies of one sparse image: the same
/// client must see the same export from both. `qemu-img compare` of the two exports finds them
/// identical; `qemu-img map` and `nbdinfo --map` give the same extents from both; nbdinfo
/// reports the same flags (the minimum block size differs on purpose: tapdiskd advertises the
/// image's O_DIRECT alignment, qemu-nbd 1 because it does the read-modify-write itself).
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(
        if: NBDServerProcess.underTest == .tapdiskd && NBDServerProcess.available(.qemuNBD)
            && NBDClientTools.have("qemu-img", "nbdinfo"),
        "compares tapdiskd's NBD front with qemu-nbd; needs qemu-img, qemu-nbd (Debian qemu-utils) and nbdinfo (libnbd-bin)"
    ))
struct NBDReferenceComparisonTests {
    @Test func tapdiskdAndQemuNBDServeTheSameExport() throws {
        let image = NBDClientTools.temporaryPath("disk.img")
        defer { NBDClientTools.removeTemporary(image) }
        try NBDClientTools.makeSparseImage(
            image, size: NBDQemuToolTests.size, data: NBDQemuToolTests.dataRanges, seed: 31)
        let copy = image + ".reference"
        try Shell.check(["cp", "--sparse=always", image, copy])
        let ours = try NBDServerProcess(image: image, kind: .tapdiskd)
        let reference = try NBDServerProcess(image: copy, kind: .qemuNBD)
        let start = MonotonicClock.nanoseconds()
        let compare = try Shell.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", ours.uri, reference.uri])
        #expect(compare.status == 0, "\(compare.stdout)\(compare.stderr)")
        var maps: [[NBDClientTools.Extent]] = []
        var nbdinfoMaps: [[NBDClientTools.Extent]] = []
        var flags: [[String: Bool]] = []
        for server in [ours, reference] {
            let map = try Shell.run(["qemu-img", "map", "--output=json", "-f", "raw", server.uri])
            maps.append(try NBDClientTools.qemuImgMap(map.stdout))
            let nbdinfo = try Shell.run(["nbdinfo", "--map", "--json", server.uri])
            nbdinfoMaps.append(try NBDClientTools.nbdinfoMap(nbdinfo.stdout))
            let info = try Shell.run(["nbdinfo", "--json", server.uri])
            let export =
                try JSONParser.parse(info.stdout).objectValue?["exports"]?.arrayValue?.first?.objectValue ?? [:]
            var f: [String: Bool] = [:]
            for member in export where member.key.hasPrefix("can_") || member.key.hasPrefix("is_") {
                if let b = member.value.boolValue { f[member.key] = b }
            }
            flags.append(f)
        }
        #expect(maps[0] == maps[1], "qemu-img map: tapdiskd \(maps[0]), qemu-nbd \(maps[1])")
        #expect(
            nbdinfoMaps[0] == nbdinfoMaps[1], "nbdinfo --map: tapdiskd \(nbdinfoMaps[0]), qemu-nbd \(nbdinfoMaps[1])")
        #expect(flags[0] == flags[1], "nbdinfo flags: tapdiskd \(flags[0]), qemu-nbd \(flags[1])")
        #expect(ours.stop() == 0, "\(ours.log.suffix(2000))")
        #expect(reference.stop() == 0, "\(reference.log)")
        print(
            "nbd reference: tapdiskd and qemu-nbd serve identical bytes, \(maps[0].count) equal qemu-img map extents,"
                + " equal nbdinfo maps and flags \(flags[0].filter(\.value).keys.sorted());"
                + " \(NBDQemuToolTests.ms(since: start)) ms")
    }
}
