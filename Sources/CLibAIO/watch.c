// Noticing that the image changed size without polling it: inotify for a file, kernel uevents
// for a block device (a block device's resize raises no inotify event on its node).
#include "CLibAIO.h"

#include <errno.h>
#include <linux/netlink.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int clibaio_inotify_image(int image_fd) {
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) return -errno;
    // The magic link names the very inode the daemon has open, even if the path was replaced.
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", image_fd);
    if (inotify_add_watch(fd, path, IN_MODIFY | IN_ATTRIB) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int clibaio_inotify_drain(int fd) {
    // Aligned as inotify_event requires; large enough for many events per read.
    char buffer[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    int events = 0;
    for (;;) {
        ssize_t n = read(fd, buffer, sizeof buffer);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno == EAGAIN ? events : -errno;
        }
        if (n == 0) return events;
        for (ssize_t off = 0; off < n;) {
            const struct inotify_event *e = (const struct inotify_event *)(buffer + off);
            events++;
            off += (ssize_t)sizeof *e + e->len;
        }
    }
}

int clibaio_uevent_socket(void) {
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
    if (fd < 0) return -errno;
    struct sockaddr_nl addr;
    memset(&addr, 0, sizeof addr);
    addr.nl_family = AF_NETLINK;
    addr.nl_groups = 1;  // the kernel's own uevents (udev's re-broadcasts are group 2)
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int clibaio_uevent_drain(int fd) {
    char buffer[8192];
    int relevant = 0;
    for (;;) {
        ssize_t n = recv(fd, buffer, sizeof buffer - 1, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == ENOBUFS) {  // events were dropped: one may have been a resize
                relevant = 1;
                continue;
            }
            return errno == EAGAIN ? relevant : -errno;
        }
        buffer[n] = 0;
        // "change@/devices/.../block/NAME\0ACTION=change\0...SUBSYSTEM=block\0...": the kernel
        // sends KEY=VALUE strings separated by NULs after the summary.
        if (strncmp(buffer, "change@", 7) != 0) continue;
        for (ssize_t off = 0; off < n; off += (ssize_t)strlen(buffer + off) + 1) {
            if (strcmp(buffer + off, "SUBSYSTEM=block") == 0) {
                relevant = 1;
                break;
            }
        }
    }
}

int clibaio_in_initial_user_namespace(void) {
    // The initial namespace maps every uid to itself: one line "0 0 4294967295".
    FILE *f = fopen("/proc/self/uid_map", "re");
    if (!f) return 1;  // no user namespaces configured: the initial one
    unsigned long inside = 1, outside = 1, count = 0;
    int fields = fscanf(f, "%lu %lu %lu", &inside, &outside, &count);
    int more = fgetc(f) != EOF && fgetc(f) != EOF;  // a second line means a partial mapping
    fclose(f);
    return fields == 3 && inside == 0 && outside == 0 && count == 4294967295UL && !more;
}
