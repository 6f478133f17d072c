import CLibAIO
import Glibc

/// Whether a file image's filesystem can punch holes (the `discard` feature), found out without
/// touching the image.
///
/// A punch changes the file's mtime and ctime even when it lies past EOF (Linux 6.x calls
/// `file_modified` before looking at the range), so the image itself is never probed. Instead an
/// unnamed `O_TMPFILE` in the image's directory, on the same filesystem, is punched and thrown
/// away; it is never linked, so the directory does not change either. Where no temporary file
/// can be made (a read-only mount, a sandbox that makes only the image writable, a filesystem
/// without `O_TMPFILE`) the answer comes from the filesystem's type.
enum DiscardProbe {
    enum Method: String, Sendable {
        case temporaryFile = "O_TMPFILE punch"
        case filesystemType = "filesystem type"
    }

    static func supportsPunchHole(imageFD fd: Int32, path: String) -> (supported: Bool, method: Method) {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let rc = clibaio_probe_punch_hole_in(directory)
        if rc >= 0 { return (rc == 1, .temporaryFile) }
        return (filesystemTypePunchesHoles(fd), .filesystemType)
    }

    /// Filesystems whose Linux driver implements `FALLOC_FL_PUNCH_HOLE` (statfs `f_type`).
    static let punchingFilesystems: Set<UInt64> = [
        0xEF53,  // ext4 (and ext2/ext3 mounted by it)
        0x5846_5342,  // xfs
        0x9123_683E,  // btrfs
        0x0102_1994,  // tmpfs
        0xF2F5_2010,  // f2fs
        0x7461_636F,  // ocfs2
        0x0116_1970,  // gfs2
    ]

    static func filesystemTypePunchesHoles(_ fd: Int32) -> Bool {
        var type: UInt64 = 0
        guard clibaio_fs_type(fd, &type) == 0 else { return false }
        return punchingFilesystems.contains(type)
    }
}
