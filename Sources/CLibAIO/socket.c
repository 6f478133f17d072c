// AF_UNIX SOCK_SEQPACKET sockets and SCM_RIGHTS fd passing.
#include "CLibAIO.h"
#include "scm_rights.h"

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

// One listen and one connect for both socket types: SOCK_SEQPACKET for the control socket,
// SOCK_STREAM for vhost-user.
static int unix_listen(const char *path, int type, int backlog) {
    struct sockaddr_un addr;
    int rc = fill_sockaddr(&addr, path);
    if (rc < 0) return rc;
    int fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, backlog) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static int unix_connect(const char *path, int type) {
    struct sockaddr_un addr;
    int rc = fill_sockaddr(&addr, path);
    if (rc < 0) return rc;
    int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int clibaio_unix_listen(const char *path, int backlog) { return unix_listen(path, SOCK_SEQPACKET, backlog); }

int clibaio_unix_connect(const char *path) { return unix_connect(path, SOCK_SEQPACKET); }

int clibaio_stream_listen(const char *path, int backlog) { return unix_listen(path, SOCK_STREAM, backlog); }

int clibaio_stream_connect(const char *path) { return unix_connect(path, SOCK_STREAM); }

int clibaio_accept(int listen_fd) {
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int clibaio_unix_listener_type(int fd) {
    int domain = 0, type = 0, listening = 0;
    socklen_t len = sizeof(domain);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX) return 0;
    len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return 0;
    len = sizeof(listening);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) return 0;
    return type == SOCK_SEQPACKET || type == SOCK_STREAM ? type : 0;
}

int clibaio_is_seqpacket_listener(int fd) { return clibaio_unix_listener_type(fd) == SOCK_SEQPACKET; }

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
    clibaio_scm_collect(&msg, fds, max_fds, nfds);
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
    if (nfds > 0) clibaio_scm_attach(&msg, control.buf, fds, nfds);
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
