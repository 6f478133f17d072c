import CLibAIO
import Glibc

/// Keeps two daemons (or a daemon and QEMU) from serving one image at once, the way QEMU does
/// since 2.10: open file description locks (`F_OFD_SETLK`) over the whole file, held by the
/// image's own fd for the life of the process and released by the kernel when it dies.
///
/// Read-write takes an exclusive (write) lock, `--readonly` a shared (read) lock: any number of
/// read-only users may share an image, a read-only user is refused while a writer holds it, and a
/// writer is refused while anyone holds it. The locks are advisory: they stop cooperating users
/// (tapdiskd, QEMU, `flock`-aware tools), not `dd`. A block device is locked on its device node's
/// inode; a read-write block device is also opened `O_EXCL` (see `Image`).
enum ImageLock {
    /// Takes the lock or throws one line naming the conflict.
    static func acquire(_ fd: borrowing FileDescriptor, path: String, readOnly: Bool) throws(Image.OpenError) {
        let rc = clibaio_ofd_lock(fd.rawValue, readOnly ? 0 : 1)
        if rc == 0 { return }
        guard -rc == EAGAIN || -rc == EACCES else {
            throw .system(Errno(rawValue: -rc), "cannot lock \(path)")
        }
        var pid: Int32 = 0
        let holder = clibaio_ofd_conflict(fd.rawValue, readOnly ? 0 : 1, &pid)
        throw .locked(path, conflict(holder: holder, pid: pid, readOnly: readOnly))
    }

    /// "a read-write user holds it …; refusing to serve it read-only", and so on.
    static func conflict(holder: Int32, pid: Int32, readOnly: Bool) -> String {
        let who: String
        switch holder {
        case 2: who = "a read-write user (another tapdiskd or QEMU) holds an exclusive lock on it"
        case 1: who = "a read-only user (another tapdiskd --readonly or QEMU) holds a shared lock on it"
        default: who = "another process holds a lock on it"
        }
        let owner = pid > 0 ? " (pid \(pid))" : ""
        return "\(who)\(owner); refusing to serve it \(readOnly ? "read-only" : "read-write")"
    }
}
