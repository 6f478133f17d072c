// memfd and file seals (GNU-only names).
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

// MARK: - memfd and seals

const unsigned clibaio_MFD_CLOEXEC = MFD_CLOEXEC;
const unsigned clibaio_MFD_ALLOW_SEALING = MFD_ALLOW_SEALING;
const int clibaio_F_SEAL_SEAL = F_SEAL_SEAL;
const int clibaio_F_SEAL_SHRINK = F_SEAL_SHRINK;
const int clibaio_F_SEAL_GROW = F_SEAL_GROW;
const int clibaio_F_SEAL_WRITE = F_SEAL_WRITE;
#ifdef F_SEAL_FUTURE_WRITE
const int clibaio_F_SEAL_FUTURE_WRITE = F_SEAL_FUTURE_WRITE;
#else
const int clibaio_F_SEAL_FUTURE_WRITE = 0x0010;
#endif

int clibaio_memfd_create(const char *name, unsigned flags) {
    int fd = memfd_create(name, flags);
    return fd < 0 ? -errno : fd;
}

int clibaio_add_seals(int fd, int seals) { return fcntl(fd, F_ADD_SEALS, seals) == 0 ? 0 : -errno; }

int clibaio_get_seals(int fd) {
    int s = fcntl(fd, F_GET_SEALS);
    return s < 0 ? -errno : s;
}
