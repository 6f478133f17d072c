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

// MARK: - ABI checks: the layouts the ring and libaio rely on.

_Static_assert(sizeof(struct clibaio_blkif_segment) == 8, "blkif segment is 8 bytes");
_Static_assert(sizeof(struct clibaio_blkif_request) == CLIBAIO_BLKIF_SLOT_SIZE, "blkif slot is 112 bytes");
_Static_assert(offsetof(struct clibaio_blkif_request, operation) == 0, "operation @0");
_Static_assert(offsetof(struct clibaio_blkif_request, nr_segments) == 1, "nr_segments @1");
_Static_assert(offsetof(struct clibaio_blkif_request, handle) == 2, "handle @2");
_Static_assert(offsetof(struct clibaio_blkif_request, id) == 8, "id @8");
_Static_assert(offsetof(struct clibaio_blkif_request, sector_number) == 16, "sector_number @16");
_Static_assert(offsetof(struct clibaio_blkif_request, seg) == 24, "segments @24");
_Static_assert(offsetof(struct clibaio_blkif_segment, first_sect) == 4, "first_sect @4");
_Static_assert(offsetof(struct clibaio_blkif_segment, last_sect) == 5, "last_sect @5");
_Static_assert(sizeof(struct clibaio_blkif_response) == 16, "response is 16 bytes");
_Static_assert(offsetof(struct clibaio_blkif_response, operation) == 8, "rsp operation @8");
_Static_assert(offsetof(struct clibaio_blkif_response, status) == 10, "rsp status @10");
_Static_assert(sizeof(struct clibaio_blkif_request_indirect) == CLIBAIO_BLKIF_SLOT_SIZE,
               "indirect slot is 112 bytes");
_Static_assert(offsetof(struct clibaio_blkif_request_indirect, indirect_op) == 1, "indirect_op @1");
_Static_assert(offsetof(struct clibaio_blkif_request_indirect, nr_segments) == 2, "indirect nr_segments @2");
_Static_assert(offsetof(struct clibaio_blkif_request_indirect, id) == 8, "indirect id @8");
_Static_assert(offsetof(struct clibaio_blkif_request_indirect, sector_number) == 16, "indirect sector @16");
_Static_assert(offsetof(struct clibaio_blkif_request_indirect, handle) == 24, "indirect handle @24");
_Static_assert(offsetof(struct clibaio_blkif_request_indirect, indirect_grefs) == 28, "indirect_grefs @28");
_Static_assert(CLIBAIO_BLKIF_SEGMENTS_PER_INDIRECT_PAGE * sizeof(struct clibaio_blkif_segment) == 4096,
               "512 descriptors fill one page");
_Static_assert(sizeof(struct iocb) == 64, "struct iocb is 64 bytes (kernel ABI)");
_Static_assert(sizeof(struct io_event) == 32, "struct io_event is 32 bytes (kernel ABI)");
_Static_assert(sizeof(struct iovec) == 16, "struct iovec is 16 bytes");
_Static_assert(sizeof(uint64_t) == sizeof(eventfd_t), "eventfd counter is u64");

// MARK: - blkif

void clibaio_blkif_copy_request(struct clibaio_blkif_request *dst, const void *slot) {
    memcpy(dst, slot, sizeof(*dst));
    __asm__ __volatile__("" ::: "memory");
}

void clibaio_blkif_write_response(void *slot, uint64_t id, uint8_t operation, int16_t status) {
    struct clibaio_blkif_response rsp;
    memset(&rsp, 0, sizeof(rsp));
    rsp.id = id;
    rsp.operation = operation;
    rsp.status = status;
    memcpy(slot, &rsp, sizeof(rsp));
}

uint64_t clibaio_blkif_discard_sectors(const struct clibaio_blkif_request *req) {
    uint64_t n;
    memcpy(&n, (const uint8_t *)req + 24, sizeof(n));
    return n;
}

void clibaio_blkif_copy_segments(struct clibaio_blkif_segment *dst, const void *page, unsigned count) {
    memcpy(dst, page, (size_t)count * sizeof(*dst));
    __asm__ __volatile__("" ::: "memory");
}

// MARK: - libaio (libaio returns -errno and leaves errno alone)

int clibaio_setup(unsigned nr_events, io_context_t *ctx) {
    *ctx = 0;
    return io_setup((int)nr_events, ctx);
}

int clibaio_destroy(io_context_t ctx) { return io_destroy(ctx); }

int clibaio_submit(io_context_t ctx, long nr, struct iocb **iocbs) { return io_submit(ctx, nr, iocbs); }

int clibaio_getevents(io_context_t ctx, long max_nr, struct io_event *events) {
    struct timespec zero = {0, 0};
    return io_getevents(ctx, 0, max_nr, events, &zero);
}

void clibaio_prep_preadv(struct iocb *cb, int fd, const struct iovec *iov, int iovcnt, int64_t offset,
                         int resfd, uint64_t data) {
    io_prep_preadv(cb, fd, iov, iovcnt, offset);
    io_set_eventfd(cb, resfd);
    cb->data = (void *)(uintptr_t)data;
}

void clibaio_prep_pwritev(struct iocb *cb, int fd, const struct iovec *iov, int iovcnt, int64_t offset,
                          int resfd, uint64_t data) {
    io_prep_pwritev(cb, fd, iov, iovcnt, offset);
    io_set_eventfd(cb, resfd);
    cb->data = (void *)(uintptr_t)data;
}

void clibaio_prep_fdsync(struct iocb *cb, int fd, int resfd, uint64_t data) {
    io_prep_fdsync(cb, fd);
    io_set_eventfd(cb, resfd);
    cb->data = (void *)(uintptr_t)data;
}

uint64_t clibaio_event_data(const struct io_event *ev) { return (uint64_t)(uintptr_t)ev->data; }

// io_event.res is declared unsigned long; a failure is a negative errno in two's complement.
int64_t clibaio_event_res(const struct io_event *ev) { return (int64_t)ev->res; }

int clibaio_iocb_opcode(const struct iocb *cb) { return cb->aio_lio_opcode; }

const int clibaio_IO_CMD_PREADV = IO_CMD_PREADV;
const int clibaio_IO_CMD_PWRITEV = IO_CMD_PWRITEV;
const int clibaio_IO_CMD_FDSYNC = IO_CMD_FDSYNC;

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

// MARK: - eventfd, epoll, timerfd, signalfd

const int clibaio_EFD_NONBLOCK = EFD_NONBLOCK;
const int clibaio_EFD_CLOEXEC = EFD_CLOEXEC;
const int clibaio_EFD_SEMAPHORE = EFD_SEMAPHORE;

int clibaio_eventfd(unsigned initval, int flags) {
    int fd = eventfd(initval, flags);
    return fd < 0 ? -errno : fd;
}

int clibaio_fd_is_eventfd(int fd, int *semaphore) {
    char path[64];
    char link[64];
    *semaphore = 0;
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof(link) - 1);
    if (n < 0) return -errno;
    link[n] = 0;
    if (strcmp(link, "anon_inode:[eventfd]") != 0) return 0;
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "re");
    if (!f) return -errno;
    char line[128];
    while (fgets(line, sizeof(line), f)) {
        int v = 0;
        if (sscanf(line, "eventfd-semaphore: %d", &v) == 1 && v != 0) *semaphore = 1;
    }
    fclose(f);
    return 1;
}

int clibaio_eventfd_signal(int fd) {
    uint64_t one = 1;
    for (;;) {
        ssize_t n = write(fd, &one, sizeof(one));
        if (n == (ssize_t)sizeof(one)) return 0;
        if (n < 0 && errno == EINTR) continue;
        return n < 0 ? -errno : -EIO;
    }
}

int clibaio_eventfd_drain(int fd, uint64_t *value) {
    for (;;) {
        ssize_t n = read(fd, value, sizeof(*value));
        if (n == (ssize_t)sizeof(*value)) return 0;
        if (n < 0 && errno == EINTR) continue;
        return n < 0 ? -errno : -EIO;
    }
}

const uint32_t clibaio_EPOLLIN = EPOLLIN;
const uint32_t clibaio_EPOLLOUT = EPOLLOUT;
const uint32_t clibaio_EPOLLERR = EPOLLERR;
const uint32_t clibaio_EPOLLHUP = EPOLLHUP;
const uint32_t clibaio_EPOLLRDHUP = EPOLLRDHUP;

int clibaio_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static int epoll_ctl_token(int epfd, int op, int fd, uint32_t events, uint64_t token) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = events;
    ev.data.u64 = token;
    return epoll_ctl(epfd, op, fd, &ev) == 0 ? 0 : -errno;
}

int clibaio_epoll_add(int epfd, int fd, uint32_t events, uint64_t token) {
    return epoll_ctl_token(epfd, EPOLL_CTL_ADD, fd, events, token);
}

int clibaio_epoll_modify(int epfd, int fd, uint32_t events, uint64_t token) {
    return epoll_ctl_token(epfd, EPOLL_CTL_MOD, fd, events, token);
}

int clibaio_epoll_remove(int epfd, int fd) { return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) == 0 ? 0 : -errno; }

int clibaio_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event evs[64];
    if (max > 64) max = 64;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    if (n < 0) return -errno;
    for (int i = 0; i < n; i++) {
        tokens[i] = evs[i].data.u64;
        events[i] = evs[i].events;
    }
    return n;
}

int clibaio_timerfd_periodic(unsigned period_ms) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0) return -errno;
    struct itimerspec its;
    its.it_interval.tv_sec = period_ms / 1000;
    its.it_interval.tv_nsec = (long)(period_ms % 1000) * 1000000L;
    its.it_value = its.it_interval;
    if (timerfd_settime(fd, 0, &its, NULL) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int clibaio_signalfd(const int *signals, int count) {
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < count; i++) sigaddset(&set, signals[i]);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) return -errno;
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int clibaio_signalfd_read(int fd) {
    struct signalfd_siginfo si;
    ssize_t n = read(fd, &si, sizeof(si));
    if (n < 0) return -errno;
    if (n != (ssize_t)sizeof(si)) return -EIO;
    return (int)si.ssi_signo;
}

// MARK: - AF_UNIX SOCK_SEQPACKET

const int clibaio_MSG_TRUNC = MSG_TRUNC;
const int clibaio_MSG_CTRUNC = MSG_CTRUNC;

static int fill_sockaddr(struct sockaddr_un *addr, const char *path) {
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(addr->sun_path)) return -ENAMETOOLONG;
    strcpy(addr->sun_path, path);
    return 0;
}

int clibaio_raise_nofile_limit(uint64_t *soft, uint64_t *hard) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -errno;
    int rc = 0;
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit raised = rl;
        raised.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised; else rc = -errno;
    }
    *soft = (uint64_t)rl.rlim_cur;
    *hard = (uint64_t)rl.rlim_max;
    return rc;
}

int clibaio_unix_listen(const char *path, int backlog) {
    struct sockaddr_un addr;
    int rc = fill_sockaddr(&addr, path);
    if (rc < 0) return rc;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, backlog) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int clibaio_unix_connect(const char *path) {
    struct sockaddr_un addr;
    int rc = fill_sockaddr(&addr, path);
    if (rc < 0) return rc;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int clibaio_accept(int listen_fd) {
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int clibaio_is_seqpacket_listener(int fd) {
    int type = 0, listening = 0;
    socklen_t len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return 0;
    len = sizeof(listening);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0) return 0;
    return type == SOCK_SEQPACKET && listening;
}

// Room for the kernel's per-message maximum (SCM_MAX_FD = 253), so no received fd is ever lost
// inside a truncated control buffer: every one is either returned or closed here.
#define CLIBAIO_MAX_SCM_FDS 253

ssize_t clibaio_recv_datagram(int fd, void *buf, size_t len, int *fds, int max_fds, int *nfds, int *flags_out) {
    union {
        char buf[CMSG_SPACE(sizeof(int) * CLIBAIO_MAX_SCM_FDS)];
        struct cmsghdr align;
    } control;
    struct iovec iov = {buf, len};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    *nfds = 0;
    *flags_out = 0;
    ssize_t n;
    do {
        n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_TRUNC | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    *flags_out = msg.msg_flags;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *data = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int received;
            memcpy(&received, data + i, sizeof(int));
            if (*nfds < max_fds) {
                fds[*nfds] = received;
            } else {
                close(received);
            }
            (*nfds)++;
        }
    }
    return n;
}

ssize_t clibaio_send_datagram(int fd, const void *buf, size_t len, const int *fds, int nfds, int nonblocking) {
    union {
        char buf[CMSG_SPACE(sizeof(int) * 8)];
        struct cmsghdr align;
    } control;
    if (nfds > 8) return -EINVAL;
    struct iovec iov = {(void *)buf, len};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        memset(control.buf, 0, sizeof(control.buf));
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ssize_t n;
    do {
        n = sendmsg(fd, &msg, MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0));
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

int clibaio_peer_hung_up(int fd) {
    struct pollfd p = {fd, POLLRDHUP, 0};
    int n = poll(&p, 1, 0);
    if (n < 0) return -errno;
    return (p.revents & (POLLHUP | POLLRDHUP)) ? 1 : 0;
}

// MARK: - systemd

int clibaio_sd_notify(const char *state) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return 1;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    size_t plen = strlen(path);
    if (plen >= sizeof(addr.sun_path)) return -ENAMETOOLONG;
    memcpy(addr.sun_path, path, plen);
    if (addr.sun_path[0] == '@') addr.sun_path[0] = 0;  // abstract namespace
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
    ssize_t n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&addr, alen);
    int e = errno;
    close(fd);
    return n < 0 ? -e : 0;
}

int clibaio_event_opcode(const struct io_event *ev) { return ev->obj ? ev->obj->aio_lio_opcode : -1; }

void clibaio_event_set_res(struct io_event *ev, int64_t res) { ev->res = (unsigned long)res; }
