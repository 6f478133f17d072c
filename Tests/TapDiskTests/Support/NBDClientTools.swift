import CLibAIO
import Foundation
import Glibc

@testable import TapDisk

/// What the NBD suites need around the real clients: whether Debian's tools are installed, sparse
/// images with a known layout, and that layout as the kernel reports it (`SEEK_DATA`/`SEEK_HOLE`),
/// which is the truth `qemu-img map`, `nbdinfo --map` and `nbdcopy` must reproduce.
enum NBDClientTools {
    /// Whether every tool is on PATH (or in the sbin directories).
    static func have(_ tools: String...) -> Bool { tools.allSatisfy { Shell.which($0) != nil } }

    /// Whether fio is installed with its `nbd` engine (libnbd), which Debian's fio has.
    static var fioHasNBDEngine: Bool {
        guard have("fio") else { return false }
        return ((try? Shell.run(["fio", "--enghelp"]))?.stdout ?? "").split(separator: "\n").contains {
            $0.trimmingCharacters(in: .whitespaces) == "nbd"
        }
    }

    /// Debian's python3 with python3-libnbd: the randomized model test's client. pyenv's python
    /// first on PATH does not see Debian's dist-packages, hence the absolute path.
    static let python = "/usr/bin/python3"
    static var havePythonLibnbd: Bool {
        FileManager.default.isExecutableFile(atPath: python)
            && FileManager.default.fileExists(atPath: "/usr/lib/python3/dist-packages/nbd.py")
    }

    /// The checkout's root (for scripts/).
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    static func script(_ name: String) -> String { repository.appendingPathComponent("scripts/\(name)").path }

    /// A run of the file: `data` true for allocated bytes, false for a hole.
    struct Extent: Equatable, CustomStringConvertible {
        var offset: UInt64
        var length: UInt64
        var data: Bool
        var description: String { "\(data ? "data" : "hole")@\(offset)+\(length)" }
    }

    /// Adjacent extents of the same kind merged into one, zero-length ones dropped.
    static func merged(_ extents: [Extent]) -> [Extent] {
        var out: [Extent] = []
        for e in extents where e.length > 0 {
            if let last = out.last, last.data == e.data, last.offset + last.length == e.offset {
                out[out.count - 1].length += e.length
            } else {
                out.append(e)
            }
        }
        return out
    }

    /// The file's layout from `lseek(SEEK_DATA)`/`lseek(SEEK_HOLE)`, covering [0, size).
    static func seekLayout(_ path: String) throws -> [Extent] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno.current }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Errno.current }
        let size = UInt64(st.st_size)
        let seekData: Int32 = 3  // SEEK_DATA and SEEK_HOLE (Linux); Glibc's module hides them
        let seekHole: Int32 = 4
        var extents: [Extent] = []
        var at: UInt64 = 0
        while at < size {
            let data = lseek(fd, off_t(at), seekData)
            if data < 0 {
                guard errno == ENXIO else { throw Errno.current }
                extents.append(Extent(offset: at, length: size - at, data: false))
                break
            }
            let start = UInt64(data)
            if start > at { extents.append(Extent(offset: at, length: start - at, data: false)) }
            let hole = lseek(fd, off_t(start), seekHole)
            guard hole >= 0 else { throw Errno.current }
            let end = min(UInt64(hole), size)
            extents.append(Extent(offset: start, length: end - start, data: true))
            at = end
        }
        return merged(extents)
    }

    /// Creates a sparse image of `size` bytes at `path` holding random data (from `seed`) exactly
    /// in `data` (offset, length) ranges, fsync'd; returns the layout written.
    @discardableResult
    static func makeSparseImage(_ path: String, size: UInt64, data: [(UInt64, UInt64)], seed: UInt64) throws
        -> [Extent]
    {
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Errno.current }
        defer { close(fd) }
        guard ftruncate(fd, off_t(size)) == 0 else { throw Errno.current }
        var rng = SplitMix(seed: seed)
        for (offset, length) in data {
            var bytes = [UInt8](repeating: 0, count: Int(length))
            bytes.withUnsafeMutableBytes { raw in
                for i in stride(from: 0, to: raw.count, by: 8) {
                    raw.storeBytes(of: rng.next() | 1, toByteOffset: i, as: UInt64.self)
                }
            }
            let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
            guard n == Int(length) else { throw Errno.current }
        }
        guard fsync(fd) == 0 else { throw Errno.current }
        var extents: [Extent] = []
        var at: UInt64 = 0
        for (offset, length) in data.sorted(by: { $0.0 < $1.0 }) {
            extents.append(Extent(offset: at, length: offset - at, data: false))
            extents.append(Extent(offset: offset, length: length, data: true))
            at = offset + length
        }
        extents.append(Extent(offset: at, length: size - at, data: false))
        return merged(extents)
    }

    /// A fresh path in /var/tmp (the host's filesystem: /tmp may be a tmpfs without O_DIRECT or
    /// SEEK_DATA granularity), removed by the caller.
    static func temporaryPath(_ name: String) -> String {
        var template = Array("/var/tmp/tapdisk-nbd-XXXXXX".utf8CString)
        let dir = String(cString: mkdtemp(&template)!)
        return dir + "/" + name
    }

    /// Removes a path from `temporaryPath` with its directory.
    static func removeTemporary(_ path: String) {
        try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent)
    }

    /// `qemu-img map --output=json` / `nbdinfo --map --json` entries as extents: data when the
    /// client says the range is allocated. qemu-img: `"data": true`; nbdinfo: type bit 0 (hole)
    /// clear.
    static func qemuImgMap(_ json: String) throws -> [Extent] {
        guard let array = try JSONParser.parse(json).arrayValue else { throw Errno(rawValue: EINVAL) }
        return merged(
            array.compactMap { entry in
                guard let o = entry.objectValue, let start = o["start"]?.uint64Value,
                    let length = o["length"]?.uint64Value
                else { return nil }
                return Extent(offset: start, length: length, data: o["data"]?.boolValue == true)
            })
    }

    static func nbdinfoMap(_ json: String) throws -> [Extent] {
        guard let array = try JSONParser.parse(json).arrayValue else { throw Errno(rawValue: EINVAL) }
        return merged(
            array.compactMap { entry in
                guard let o = entry.objectValue, let offset = o["offset"]?.uint64Value,
                    let length = o["length"]?.uint64Value, let type = o["type"]?.uint64Value
                else { return nil }
                return Extent(offset: offset, length: length, data: type & 1 == 0)
            })
    }

    /// Whether two files hold the same bytes (`cmp`).
    static func sameContent(_ a: String, _ b: String) throws -> Bool {
        try Shell.run(["cmp", "-s", a, b]).status == 0
    }
}
