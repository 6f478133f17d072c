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
        let path = try EngineHarness.makeTemporaryImage(bytes: (1 << 20) + 512)
        defer { unlink(path) }
        let image = try Image(path: path, cache: .writeback, readOnly: true)
        #expect(image.geometry.sectors == 2049)
        #expect(image.geometry.sectorSize == 512)
        #expect(image.geometry.physicalSectorSize >= 512)
        #expect(!image.geometry.isBlockDevice)
        #expect(image.geometry.discard)  // probed on a temporary file, not on the image
        let readOnly = image.readOnly
        #expect(readOnly)
    }

    /// Sizes that are no disk (0 bytes, or not a whole number of 512-byte sectors) are refused
    /// rather than rounded: a rounded-down tail could never be read or written.
    @Test func emptyAndPartialSectorFilesAreRefused() throws {
        for bytes in [0, 1000, (1 << 20) + 700] {
            let path = try EngineHarness.makeTemporaryImage(bytes: bytes)
            defer { unlink(path) }
            switch openError(path, cache: .writeback) {
            case .empty: #expect(bytes == 0)
            case .partialSector(_, let size): #expect(size == UInt64(bytes))
            default: Issue.record("\(bytes) bytes were not refused")
            }
        }
    }

    /// OFD locks: two read-write opens of one image conflict even within one process.
    @Test func secondReadWriteOpenIsRefusedAsLocked() throws {
        let path = try EngineHarness.makeTemporaryImage(bytes: 1 << 20)
        defer { unlink(path) }
        let first = try Image(path: path, cache: .writeback)
        guard case .locked(_, let conflict) = openError(path, cache: .writeback) else {
            Issue.record("a second writer was not refused")
            return
        }
        #expect(conflict.contains("read-write user"))
        _ = first.path
    }
}
