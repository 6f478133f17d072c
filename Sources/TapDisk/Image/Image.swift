import CLibAIO
import Glibc

/// The disk image: a regular file or a block device, opened once for the process' lifetime.
///
/// One fd serves every request so that a writeback error the kernel reports on it (once!) is seen
/// by the next sync through that same fd (§5.3).
package struct Image: ~Copyable {
    package let path: String
    package let fd: FileDescriptor
    package let cache: CacheMode
    package let readOnly: Bool
    package let geometry: ImageGeometry

    package enum OpenError: Error, CustomStringConvertible {
        case system(Errno, String)
        /// The filesystem refuses O_DIRECT: the operator must choose buffered caching explicitly.
        case directIOUnsupported(String)
        case notFileOrBlockDevice(String)
        case unsupportedSectorSize(UInt32)
        /// Another user holds a conflicting lock (`ImageLock`): the path and the conflict.
        case locked(String, String)
        /// `O_EXCL` on a read-write block device failed with EBUSY: mounted, held by
        /// device-mapper/md/LVM, or opened exclusively by another process.
        case blockDeviceInUse(String)
        /// A 0-byte file: a disk with no sectors is always a mistake (a failed copy, a typo).
        case empty(String)
        /// A file whose size is not a multiple of 512: the tail could be neither read nor written.
        case partialSector(String, UInt64)

        package var description: String {
            switch self {
            case .system(let e, let what): "\(what): \(e)"
            case .directIOUnsupported(let p):
                "\(p): the filesystem refuses O_DIRECT; use --cache writeback (or writethrough)"
            case .notFileOrBlockDevice(let p): "\(p): not a regular file or block device"
            case .unsupportedSectorSize(let s): "logical sector size \(s) is not a power of two between 512 and 4096"
            case .locked(let p, let conflict): "\(p) is locked: \(conflict)"
            case .blockDeviceInUse(let p):
                "\(p): the block device is in use (mounted, held by device-mapper, md or LVM, or opened exclusively by another process: EBUSY); refusing to serve it read-write"
            case .empty(let p): "\(p): the image is empty (0 bytes); refusing to serve a disk with no sectors"
            case .partialSector(let p, let size):
                "\(p): the image size \(size) is not a multiple of 512 bytes; its last \(size % 512) bytes could never be read or written. Resize it to a whole number of sectors (truncate -s \((size + 511) / 512 * 512) \(p)) or serve a copy"
            }
        }
    }

    package init(path: String, cache: CacheMode = .none, readOnly: Bool = false) throws(OpenError) {
        self.path = path
        self.cache = cache
        self.readOnly = readOnly
        // Judge the kind first: a character device refuses O_DIRECT too, and "use --cache
        // writeback" would be the wrong advice for it.
        var pathStat = stat()
        if stat(path, &pathStat) == 0, pathStat.st_mode & S_IFMT != S_IFREG, pathStat.st_mode & S_IFMT != S_IFBLK,
            pathStat.st_mode & S_IFMT != S_IFDIR
        {
            throw .notFileOrBlockDevice(path)
        }
        // A read-write block device is opened O_EXCL: the kernel then refuses it while it is
        // mounted, claimed by device-mapper/md, or opened O_EXCL by another user, none of which
        // takes our advisory lock. Read-only users may share the device, so they do not claim it.
        let claimDevice = !readOnly && pathStat.st_mode & S_IFMT == S_IFBLK
        let access = (readOnly ? O_RDONLY : O_RDWR) | (claimDevice ? clibaio_O_EXCL : 0)
        let opened: FileDescriptor
        do {
            opened = try FileDescriptor.open(path, flags: access | cache.openFlags)
        } catch {
            if error.rawValue == EINVAL && cache.usesDirectIO {
                throw .directIOUnsupported(path)
            }
            if error.rawValue == EBUSY && claimDevice { throw .blockDeviceInUse(path) }
            throw .system(error, "cannot open \(path)")
        }
        try ImageLock.acquire(opened, path: path, readOnly: readOnly)
        var st = stat()
        guard fstat(opened.rawValue, &st) == 0 else { throw .system(Errno.current, "fstat \(path)") }
        let kind = st.st_mode & S_IFMT
        let geometry: ImageGeometry
        do {
            if kind == S_IFBLK {
                geometry = try Self.blockDeviceGeometry(opened)
            } else if kind == S_IFREG {
                if st.st_size == 0 { throw OpenError.empty(path) }
                if st.st_size % 512 != 0 { throw OpenError.partialSector(path, UInt64(st.st_size)) }
                geometry = try Self.fileGeometry(
                    opened, path: path, size: UInt64(st.st_size), cache: cache)
            } else {
                throw OpenError.notFileOrBlockDevice(path)
            }
        } catch let e as OpenError {
            throw e
        } catch {
            throw .system(Errno(rawValue: EIO), path)
        }
        guard geometry.sectorSize >= 512, geometry.sectorSize <= 4096,
            geometry.sectorSize & (geometry.sectorSize - 1) == 0
        else { throw .unsupportedSectorSize(geometry.sectorSize) }
        self.geometry = geometry
        self.fd = opened
    }

    private static func blockDeviceGeometry(_ fd: borrowing FileDescriptor) throws(OpenError) -> ImageGeometry {
        var bytes: UInt64 = 0
        var logical: UInt32 = 512
        var physical: UInt32 = 512
        do {
            _ = try Errno.check(clibaio_blk_size_bytes(fd.rawValue, &bytes))
            _ = try Errno.check(clibaio_blk_logical_sector_size(fd.rawValue, &logical))
            _ = try Errno.check(clibaio_blk_physical_sector_size(fd.rawValue, &physical))
        } catch {
            throw .system(error, "block device ioctl")
        }
        let queue = sysfsQueue(fd)
        let zeroesMax = queue.flatMap { readSysfsNumber($0 + "/write_zeroes_max_bytes") } ?? 0
        let granularity = queue.flatMap { readSysfsNumber($0 + "/discard_granularity") } ?? 0
        let discard = zeroesMax > 0
        return ImageGeometry(
            sectors: bytes / 512, sectorSize: logical, physicalSectorSize: max(physical, logical),
            isBlockDevice: true, discard: discard,
            discardGranularity: discard ? UInt32(clamping: max(granularity, UInt64(logical))) : 0)
    }

    private static func fileGeometry(
        _ fd: borrowing FileDescriptor, path: String, size: UInt64, cache: CacheMode
    ) throws(OpenError) -> ImageGeometry {
        var sectorSize: UInt32 = 512
        if cache.usesDirectIO {
            var offsetAlign: UInt32 = 0
            var memAlign: UInt32 = 0
            if clibaio_dio_alignment(fd.rawValue, &offsetAlign, &memAlign) == 0 {
                sectorSize = max(512, offsetAlign)
            }
        }
        var vfs = statvfs()
        guard fstatvfs(fd.rawValue, &vfs) == 0 else { throw .system(Errno.current, "statvfs \(path)") }
        let fsBlock = UInt32(clamping: vfs.f_bsize)
        // Asked of a temporary file next to the image, never of the image (DiscardProbe).
        let discard = DiscardProbe.supportsPunchHole(imageFD: fd.rawValue, path: path).supported
        return ImageGeometry(
            sectors: size / 512, sectorSize: sectorSize, physicalSectorSize: max(fsBlock, sectorSize),
            isBlockDevice: false, discard: discard, discardGranularity: discard ? max(fsBlock, sectorSize) : 0)
    }

    private static func sysfsQueue(_ fd: borrowing FileDescriptor) -> String? {
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { return nil }
        let major = (st.st_rdev >> 8) & 0xfff | ((st.st_rdev >> 32) & ~0xfff)
        let minor = (st.st_rdev & 0xff) | ((st.st_rdev >> 12) & ~0xff)
        let base = "/sys/dev/block/\(major):\(minor)"
        // A partition has no queue/ of its own; its parent disk's applies.
        if readSysfsNumber(base + "/queue/logical_block_size") != nil { return base + "/queue" }
        return base + "/../queue"
    }

    private static func readSysfsNumber(_ path: String) -> UInt64? {
        guard let f = fopen(path, "re") else { return nil }
        defer { fclose(f) }
        var buf = [CChar](repeating: 0, count: 64)
        guard fgets(&buf, 64, f) != nil else { return nil }
        let s = String(decoding: buf.prefix { $0 != 0 && $0 != 10 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return UInt64(s)
    }

    /// DISCARD: punch a hole that reads back as zeros (§5.4). Synchronous: fallocate has no AIO
    /// form; the fault seam sits in front of it in test builds.
    package func punchHole(offset: Int64, length: Int64) -> Errno? {
        let rc = clibaio_punch_hole(fd.rawValue, offset, length)
        return rc == 0 ? nil : Errno(rawValue: -rc)
    }

    /// virtio WRITE_ZEROES without UNMAP: zeros that stay allocated (a later write cannot fail
    /// for space). Synchronous, like `punchHole`.
    package func zeroRange(offset: Int64, length: Int64) -> Errno? {
        let rc = clibaio_zero_range(fd.rawValue, offset, length)
        return rc == 0 ? nil : Errno(rawValue: -rc)
    }

    /// The image's size now, in 512-byte sectors (rounded down), or nil when it cannot be read:
    /// `fstat` for a file, `BLKGETSIZE64` for a block device. Cheap enough for every timer tick.
    package func currentSectors() -> UInt64? {
        if geometry.isBlockDevice {
            var bytes: UInt64 = 0
            return clibaio_blk_size_bytes(fd.rawValue, &bytes) == 0 ? bytes / 512 : nil
        }
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { return nil }
        return UInt64(st.st_size) / 512
    }

    /// Free space on the filesystem holding a file image (`f_bavail * f_frsize`); nil for block
    /// devices or when statvfs fails.
    package func filesystemSpace() -> FilesystemSpace? {
        guard !geometry.isBlockDevice else { return nil }
        return FilesystemSpace(fd: fd.rawValue)
    }
}
