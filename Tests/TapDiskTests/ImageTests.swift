import Glibc
import Testing

@testable import TapDisk

/// Opening the image: what is refused, and with which message.
@Suite struct ImageTests {
    func openError(_ path: String, cache: CacheMode = .none) -> Image.OpenError? {
        do {
            _ = try Image(path: path, cache: cache)
            return nil
        } catch {
            return error
        }
    }

    @Test func refusesWhatIsNotAFileOrBlockDevice() {
        for cache in CacheMode.allCases {
            guard case .notFileOrBlockDevice = openError("/dev/null", cache: cache) else {
                Issue.record("/dev/null with \(cache) was not refused as a non-disk")
                continue
            }
        }
        guard case .system(let e, _) = openError("/tmp") else {
            Issue.record("a directory was accepted")
            return
        }
        #expect(e.rawValue == EISDIR)
        guard case .system(let missing, _) = openError("/tmp/tapdisk-no-such-image-\(getpid())") else {
            Issue.record("a missing image was accepted")
            return
        }
        #expect(missing.rawValue == ENOENT)
        #expect(Image.OpenError.directIOUnsupported("/x").description.contains("--cache writeback"))
    }

    @Test func geometryOfAFile() throws {
        let path = try EngineHarness.makeTemporaryImage(bytes: (1 << 20) + 700)
        defer { unlink(path) }
        let image = try Image(path: path, cache: .writeback, readOnly: true)
        #expect(image.geometry.sectors == 2049)  // rounded down
        #expect(image.geometry.sectorSize == 512)
        #expect(image.geometry.physicalSectorSize >= 512)
        #expect(!image.geometry.isBlockDevice)
        #expect(image.geometry.discard)  // probed through a temporary writable fd
        let readOnly = image.readOnly
        #expect(readOnly)
    }
}
