// eventfd, epoll (its event struct is packed: Swift cannot lay it out), timerfd, signalfd.
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

int clibaio_fd_is_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -errno;
    return (flags & O_NONBLOCK) ? 1 : 0;
}

/// The `eventfd-id` line of an eventfd's fdinfo (kernel 5.2 and later), or -errno.
static long long eventfd_id(int fd) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "re");
    if (!f) return -errno;
    char line[128];
    long long id = -ENOENT;
    while (fgets(line, sizeof(line), f)) {
        long long v = 0;
        if (sscanf(line, "eventfd-id: %lld", &v) == 1 && v >= 0) id = v;
    }
    fclose(f);
    return id;
}

int clibaio_eventfds_are_same_file(int a, int b) {
    if (a == b) return 1;
    // KCMP_FILE (0): 0 when both fds refer to the same open file description.
    pid_t self = getpid();
    long r = syscall(SYS_kcmp, self, self, 0, (unsigned long)a, (unsigned long)b);
    if (r >= 0) return r == 0 ? 1 : 0;
    long long ia = eventfd_id(a);
    long long ib = eventfd_id(b);
    if (ia < 0) return (int)ia;
    if (ib < 0) return (int)ib;
    return ia == ib ? 1 : 0;
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

int clibaio_timerfd_oneshot(void) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int clibaio_timerfd_arm(int fd, uint64_t deadline_ns) {
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    // All zero disarms; any other time already past fires at once.
    its.it_value.tv_sec = (time_t)(deadline_ns / 1000000000u);
    its.it_value.tv_nsec = (long)(deadline_ns % 1000000000u);
    return timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL) == 0 ? 0 : -errno;
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
