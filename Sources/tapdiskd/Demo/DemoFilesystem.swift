import CLibAIO
import Glibc
import TapDisk

/// The host side of the seed scenario: a tiny ext4 on a loop device in a private directory, the
/// 2006 report's "200 MB filesystem" scaled down.
final class DemoFilesystem {
    let directory: String
    let backingFile: String
    let mountPoint: String
    private(set) var loopDevice: String? = nil
    private(set) var mounted = false
    let sizeMiB: Int

    init(sizeMiB: Int) throws(Subprocess.Failure) {
        self.sizeMiB = sizeMiB
        var template = Array("/tmp/tapdiskd-demo-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Subprocess.Failure(description: "mkdtemp: \(Errno.current)") }
        directory = String(cString: made)
        backingFile = directory + "/host-fs.img"
        mountPoint = directory + "/mnt"
        mkdir(mountPoint, 0o755)
        try Subprocess.run(["truncate", "-s", "\(sizeMiB)M", backingFile])
        try Subprocess.run([
            "mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0", backingFile,
        ])
        loopDevice = try Subprocess.output(["losetup", "--find", "--show", backingFile])
        try mount()
    }

    func mount() throws(Subprocess.Failure) {
        guard let loopDevice, !mounted else { return }
        try Subprocess.run(["mount", "-t", "ext4", loopDevice, mountPoint])
        mounted = true
    }

    func unmount() {
        guard mounted else { return }
        for _ in 0..<50 {
            if (try? Subprocess.run(["umount", mountPoint], allowFailure: true)) == 0 {
                mounted = false
                return
            }
            usleep(100_000)
        }
        _ = try? Subprocess.run(["umount", "-l", mountPoint], allowFailure: true)
        mounted = false
    }

    /// Unmount and mount again: what survives this was on disk, not in the page cache.
    func remount() throws(Subprocess.Failure) {
        unmount()
        try mount()
    }

    var fillerPath: String { mountPoint + "/other-tenant.dat" }

    /// Another tenant's file that leaves only `leavingBytes` free on the host filesystem.
    func makeFiller(leavingBytes: UInt64) throws(Subprocess.Failure) {
        let size = freeBytes > leavingBytes ? freeBytes - leavingBytes : 0
        let fd = open(fillerPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Subprocess.Failure(description: "cannot create \(fillerPath): \(Errno.current)") }
        defer { close(fd) }
        let rc = clibaio_posix_fallocate(fd, 0, Int64(size))
        guard rc == 0 else { throw Subprocess.Failure(description: "fallocate \(fillerPath): \(Errno(rawValue: -rc))") }
        fsync(fd)
    }

    /// What an operator does when the host filesystem is full: delete what does not belong there.
    func removeFiller() {
        unlink(fillerPath)
        sync()
    }

    var freeBytes: UInt64 {
        var vfs = statvfs()
        guard statvfs(mountPoint, &vfs) == 0 else { return 0 }
        return UInt64(vfs.f_bavail) * UInt64(vfs.f_frsize)
    }

    /// Unmounts, detaches the loop device and (unless `keep`) removes the directory.
    func cleanup(keep: Bool) {
        unmount()
        if let loopDevice {
            _ = try? Subprocess.run(["losetup", "-d", loopDevice], allowFailure: true)
            self.loopDevice = nil
        }
        if !keep { _ = try? Subprocess.run(["rm", "-rf", directory], allowFailure: true) }
    }
}
