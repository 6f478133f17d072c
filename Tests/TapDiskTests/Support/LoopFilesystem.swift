import CLibAIO
import Foundation
import Glibc
import TapDisk

/// A small, real ext4 filesystem on a loop device, for tests that need ENOSPC on demand.
///
/// tmpfs and the host's root filesystem cannot be filled safely or quickly; a private 16 MiB ext4
/// can, and it behaves like the production filesystem (delayed allocation, unwritten extents,
/// journal). Requires root. `cleanup()` runs from `deinit` too and is idempotent, so a failing
/// test never leaks a mount or a loop device; fixtures left behind by a crashed test process are
/// reaped by the next one (`reapStale`).
final class LoopFilesystem: @unchecked Sendable {
    /// The private temp directory holding the backing file and the mountpoint.
    let root: String
    let backingFile: String
    let mountPoint: String
    /// The `/dev/loopN` the filesystem lives on (nil after cleanup).
    private(set) var loopDevice: String?
    private var mounted = false
    private var cleanedUp = false
    private let lock = NSLock()

    private static let prefix = "/tmp/tapdisk-loopfs-"

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static var isRoot: Bool { geteuid() == 0 }

    /// Makes `/tmp/tapdisk-loopfs-<pid>-XXXXXX`, a backing file of `sizeMiB`, `mkfs.ext4 -q -F -m 0`
    /// (block size `blockSize` when given, e.g. 1024 for fine-grained free space) and mounts it.
    init(sizeMiB: Int = 16, blockSize: Int? = nil) throws {
        guard Self.isRoot else { throw Failure(description: "LoopFilesystem needs root") }
        Self.reapStale()
        var template = Array("\(Self.prefix)\(getpid())-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Failure(description: "mkdtemp: \(Errno.current)") }
        root = String(cString: made)
        backingFile = root + "/backing.img"
        mountPoint = root + "/mnt"
        do {
            guard mkdir(mountPoint, 0o755) == 0 else {
                throw Failure(description: "mkdir \(mountPoint): \(Errno.current)")
            }
            try Shell.check(["truncate", "-s", "\(sizeMiB)M", backingFile])
            var mkfs = ["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0"]
            if let blockSize { mkfs += ["-b", "\(blockSize)"] }
            try Shell.check(mkfs + [backingFile])
            // An explicit loop device (rather than `mount -o loop`) so cleanup knows exactly which
            // device to detach, even after a lazy unmount.
            loopDevice = try Shell.check(["losetup", "--find", "--show", backingFile])
                .trimmingCharacters(in: .whitespacesAndNewlines)
            try mount()
        } catch {
            cleanup()
            throw error
        }
    }

    deinit { cleanup() }

    /// Free space as an unprivileged writer sees it: `f_bavail * f_frsize`.
    func freeBytes() throws -> UInt64 {
        let s = try fsStats()
        return UInt64(s.f_bavail) * UInt64(s.f_frsize)
    }

    /// The filesystem's size `f_blocks * f_frsize` (docs/protocol.md §7 percent thresholds).
    func totalBytes() throws -> UInt64 {
        let s = try fsStats()
        return UInt64(s.f_blocks) * UInt64(s.f_frsize)
    }

    /// The filesystem block size.
    func blockSize() throws -> UInt64 { UInt64(try fsStats().f_frsize) }

    /// Unmounts and mounts again: everything read afterwards comes from the device, not from
    /// caches of the old mount (open fds into the filesystem must be closed first).
    func remount() throws {
        try unmount(lazyFallback: false)
        try mount()
    }

    /// The path of a file in the filesystem.
    func path(_ name: String) -> String { mountPoint + "/" + name }

    /// Creates (or resizes) `name` to hold `bytes` of allocated blocks via `posix_fallocate`.
    @discardableResult
    func makeFiller(name: String = "filler", bytes: UInt64) throws -> String {
        let p = path(name)
        let fd = clibaio_open(p, O_WRONLY | O_CREAT | clibaio_O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Failure(description: "open \(p): \(Errno(rawValue: -fd))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Failure(description: "fstat \(p): \(Errno.current)") }
        let current = UInt64(st.st_size)
        if bytes < current {
            guard ftruncate(fd, off_t(bytes)) == 0 else {
                throw Failure(description: "ftruncate \(p): \(Errno.current)")
            }
        } else if bytes > current {
            let rc = clibaio_posix_fallocate(fd, Int64(current), Int64(bytes - current))
            if rc < 0 {
                // ext4 keeps what a failed fallocate allocated; give it back so the caller's
                // arithmetic stays right.
                _ = ftruncate(fd, off_t(current))
                throw Failure(description: "posix_fallocate \(p) to \(bytes): \(Errno(rawValue: -rc))")
            }
        }
        guard fsync(fd) == 0 else { throw Failure(description: "fsync \(p): \(Errno.current)") }
        return p
    }

    /// Grows or shrinks the filler file `name` until about `bytes` remain free (within one block
    /// plus whatever extent-tree blocks the filler itself needs). Returns the free bytes reached.
    @discardableResult
    func fill(leaving bytes: UInt64, name: String = "filler") throws -> UInt64 {
        let block = try blockSize()
        var fillerSize = fileSize(path(name)) ?? 0
        for _ in 0..<16 {
            syncDirectory()
            let free = try freeBytes()
            if free >= bytes && free - bytes < block { return free }
            if free > bytes {
                fillerSize += (free - bytes) / block * block
            } else {
                let deficit = (bytes - free + block - 1) / block * block
                fillerSize = fillerSize > deficit ? fillerSize - deficit : 0
            }
            try makeFiller(name: name, bytes: fillerSize)
        }
        syncDirectory()
        return try freeBytes()
    }

    /// Deletes a filler file (and commits the deletion so free space is visible at once).
    func removeFiller(name: String = "filler") {
        _ = unlink(path(name))
        syncDirectory()
    }

    /// Unmounts (retrying, then lazily as a last resort), detaches the loop device and removes
    /// the temp directory. Safe to call any number of times, from any thread.
    func cleanup() {
        lock.lock()
        defer { lock.unlock() }
        if cleanedUp { return }
        cleanedUp = true
        try? unmount(lazyFallback: true)
        if let dev = loopDevice {
            _ = try? Shell.run(["losetup", "-d", dev])
            loopDevice = nil
        }
        if !Self.isMounted(mountPoint) {
            try? FileManager.default.removeItem(atPath: root)
        }
    }

    /// Whether `path` appears as a mountpoint in /proc/mounts (octal escapes decoded).
    static func isMounted(_ path: String) -> Bool {
        mountPoints().contains(path)
    }

    static func mountPoints() -> [String] {
        guard let text = ProcFile.read("/proc/mounts") else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            return fields.count > 1 ? decodeMountField(String(fields[1])) : nil
        }
    }

    /// Cleans up fixtures whose owning test process is gone (it crashed before `deinit`).
    static func reapStale() {
        for mp in mountPoints() where mp.hasPrefix(prefix) && mp.hasSuffix("/mnt") {
            let rest = mp.dropFirst(prefix.count)
            guard let pid = Int32(rest.prefix { $0 != "-" }), kill(pid, 0) != 0, errno == ESRCH else { continue }
            let dev = (try? Shell.run(["findmnt", "-n", "-o", "SOURCE", mp]))?.stdout
                .trimmingCharacters(in: .whitespacesAndNewlines)
            _ = try? Shell.run(["umount", mp])
            if isMounted(mp) { _ = try? Shell.run(["umount", "-l", mp]) }
            if let dev, dev.hasPrefix("/dev/loop") { _ = try? Shell.run(["losetup", "-d", dev]) }
            try? FileManager.default.removeItem(atPath: String(mp.dropLast("/mnt".count)))
        }
    }

    // MARK: - private

    /// fsync of the root directory: on ext4 this commits the running journal transaction, so
    /// freed blocks are counted as free before anyone measures (narrower than a global sync(2)).
    func syncDirectory() {
        let fd = clibaio_open(mountPoint, O_RDONLY | O_DIRECTORY | clibaio_O_CLOEXEC, 0)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        close(fd)
    }

    private func mount() throws {
        guard let dev = loopDevice else { throw Failure(description: "no loop device (cleaned up?)") }
        try Shell.check(["mount", "-t", "ext4", dev, mountPoint])
        mounted = true
    }

    private func unmount(lazyFallback: Bool) throws {
        guard mounted || Self.isMounted(mountPoint) else { return }
        var last = ""
        for attempt in 0..<10 {
            let r = try Shell.run(["umount", mountPoint])
            if r.status == 0 || !Self.isMounted(mountPoint) {
                mounted = false
                return
            }
            last = r.stderr
            usleep(UInt32(50_000 * (attempt + 1)))  // EBUSY: an fd may be closing right now.
        }
        if lazyFallback {
            _ = try? Shell.run(["umount", "-l", mountPoint])
            mounted = Self.isMounted(mountPoint)
            if !mounted { return }
        }
        throw Failure(description: "umount \(mountPoint) failed: \(last)")
    }

    private func fsStats() throws -> statvfs {
        var s = statvfs()
        guard statvfs(mountPoint, &s) == 0 else {
            throw Failure(description: "statvfs \(mountPoint): \(Errno.current)")
        }
        return s
    }

    private func fileSize(_ p: String) -> UInt64? {
        var st = stat()
        return stat(p, &st) == 0 ? UInt64(st.st_size) : nil
    }

    /// /proc/mounts escapes space, tab, newline and backslash as `\ooo`.
    private static func decodeMountField(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out = [UInt8]()
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count,
                let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8)
            {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
