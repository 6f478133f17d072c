// SCM_RIGHTS handling shared by the control socket (socket.c) and vhost-user (vhost.c). Private
// to the C target: not under include/, so Swift never sees it.
#ifndef CLIBAIO_SCM_RIGHTS_H
#define CLIBAIO_SCM_RIGHTS_H

#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/// Appends every fd a received message carries to `fds` (up to `max_fds`) and closes the rest,
/// so none is ever leaked; `*nfds` counts them all, kept or not.
static inline void clibaio_scm_collect(struct msghdr *msg, int *fds, int max_fds, int *nfds) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
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
}

/// Attaches `nfds` fds to `msg` as one SCM_RIGHTS message in `control` (at least
/// CMSG_SPACE(sizeof(int) * nfds) bytes, suitably aligned).
static inline void clibaio_scm_attach(struct msghdr *msg, char *control, const int *fds, int nfds) {
    memset(control, 0, CMSG_SPACE(sizeof(int) * nfds));
    msg->msg_control = control;
    msg->msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
}

#endif
