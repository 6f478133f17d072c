// Files and block devices: open flags Swift cannot import, OFD locks, fallocate, statx, block ioctls.
#include "CLibAIO.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/stat.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

// MARK: - files and block devices

const int clibaio_O_DIRECT = O_DIRECT;
const int clibaio_O_DSYNC = O_DSYNC;
const int clibaio_O_CLOEXEC = O_CLOEXEC;

int clibaio_open(const char *path, int flags, unsigned mode) {
    int fd = open(path, flags, (mode_t)mode);
    return fd < 0 ? -errno : fd;
}

int clibaio_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0 ? 0 : -errno;
}

int clibaio_zero_range(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length) == 0 ? 0 : -errno;
}

int clibaio_probe_punch_hole_in(const char *directory) {
    int fd = open(directory, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) return -errno;
    int result = 1;
    if (ftruncate(fd, 65536) != 0) {
        result = -errno;
    } else if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) != 0) {
        result = errno == EOPNOTSUPP ? 0 : -errno;
    }
    close(fd);
    return result;
}

const int clibaio_O_EXCL = O_EXCL;

int clibaio_fs_type(int fd, uint64_t *type) {
    struct statfs fs;
    if (fstatfs(fd, &fs) != 0) return -errno;
    *type = (uint64_t)(uint32_t)fs.f_type;
    return 0;
}

static void whole_file_lock(struct flock *fl, int exclusive) {
    memset(fl, 0, sizeof(*fl));
    fl->l_type = exclusive ? F_WRLCK : F_RDLCK;
    fl->l_whence = SEEK_SET;
    fl->l_start = 0;
    fl->l_len = 0;
}

int clibaio_ofd_lock(int fd, int exclusive) {
    struct flock fl;
    whole_file_lock(&fl, exclusive);
    return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : -errno;
}

int clibaio_ofd_conflict(int fd, int exclusive, int *pid) {
    struct flock fl;
    whole_file_lock(&fl, exclusive);
    *pid = 0;
    if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return -errno;
    if (fl.l_type == F_UNLCK) return 0;
    *pid = fl.l_pid;
    return fl.l_type == F_WRLCK ? 2 : 1;
}

int clibaio_dio_alignment(int fd, uint32_t *offset_align, uint32_t *mem_align) {
    struct statx stx;
    memset(&stx, 0, sizeof(stx));
    *offset_align = 0;
    *mem_align = 0;
    if (syscall(SYS_statx, fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) != 0) return -errno;
    if (stx.stx_mask & STATX_DIOALIGN) {
        *offset_align = stx.stx_dio_offset_align;
        *mem_align = stx.stx_dio_mem_align;
    }
    return 0;
}

int clibaio_blk_size_bytes(int fd, uint64_t *bytes) { return ioctl(fd, BLKGETSIZE64, bytes) == 0 ? 0 : -errno; }

int clibaio_blk_logical_sector_size(int fd, uint32_t *size) {
    int v = 0;
    if (ioctl(fd, BLKSSZGET, &v) != 0) return -errno;
    *size = (uint32_t)v;
    return 0;
}

int clibaio_blk_physical_sector_size(int fd, uint32_t *size) {
    unsigned int v = 0;
    if (ioctl(fd, BLKPBSZGET, &v) != 0) return -errno;
    *size = v;
    return 0;
}

int clibaio_blk_discard(int fd, uint64_t offset, uint64_t length) {
    uint64_t range[2] = {offset, length};
    return ioctl(fd, BLKDISCARD, range) == 0 ? 0 : -errno;
}

int clibaio_posix_fallocate(int fd, int64_t offset, int64_t length) {
    int rc = posix_fallocate(fd, offset, length);
    return rc == 0 ? 0 : -rc;
}
