import CLibAIO
import Glibc

/// What tells an idle daemon that its image may have changed size, so that nothing has to poll
/// it (PROTOCOL §1: the new size is served, checked at least once a second).
///
/// - A file: inotify on the open inode, `IN_MODIFY | IN_ATTRIB`. `truncate`, `ftruncate`,
///   `fallocate` and `qemu-img resize` by any process raise `IN_MODIFY`; the daemon's own
///   `O_DIRECT` AIO writes raise nothing (measured: docs/performance.md, "Idle wake-ups without
///   a fixed timer"), but its DISCARDs (`fallocate` hole punching) and another process's
///   writes do, so the daemon takes the fd out of epoll for a quiet window after each event
///   (`Daemon.imageWatchFired`).
/// - A block device: its node gets no inotify event when it is resized (`losetup -c`, an LV
///   extended), but the kernel sends a `change` uevent for the disk, so a
///   `NETLINK_KOBJECT_UEVENT` socket watches for block `change` events on the host.
///
/// When neither can be set up (inotify instances are limited per user by
/// `fs.inotify.max_user_instances`, 128 by default; a block device in a user namespace other
/// than the initial one would get no uevents), the daemon polls the size every 500 ms as before
/// and says so at start-up.
final class ImageWatch {
    let fd: FileDescriptor
    let isBlockDevice: Bool

    /// Sets up the watch for `image`; throws the errno of the failed step.
    init(image: borrowing Image) throws(Errno) {
        isBlockDevice = image.geometry.isBlockDevice
        // Since Linux 4.18 kernel uevents reach only network namespaces owned by the initial
        // user namespace; in a user-namespaced container the socket would open and stay silent.
        if isBlockDevice && clibaio_in_initial_user_namespace() == 0 { throw Errno(rawValue: EPERM) }
        let raw = isBlockDevice ? clibaio_uevent_socket() : clibaio_inotify_image(image.fd.rawValue)
        fd = FileDescriptor(adopting: try Errno.check(raw))
    }

    /// Reads everything queued; true when the image's size must be checked again.
    func drain() -> Bool {
        if isBlockDevice { return clibaio_uevent_drain(fd.rawValue) != 0 }
        return clibaio_inotify_drain(fd.rawValue) != 0
    }

    /// Why the watch could not be set up, and what that costs, for the start-up log.
    static func fallbackReason(_ error: Errno, isBlockDevice: Bool) -> String {
        if !isBlockDevice && (error.rawValue == EMFILE || error.rawValue == ENOSPC) {
            return
                "inotify: \(error) (fs.inotify.max_user_instances or max_user_watches is used up; raise it with sysctl)"
        }
        if isBlockDevice && error.rawValue == EPERM {
            return "not in the initial user namespace, where kernel uevents for a resized device arrive"
        }
        return "\(isBlockDevice ? "uevent socket" : "inotify"): \(error)"
    }
}
