#include "CLibAIOVhost.h"
#include "scm_rights.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <time.h>
#include <sys/time.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_ring.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

// MARK: - ABI checks against the kernel's uapi headers and the vhost-user spec

_Static_assert(sizeof(struct clibaio_vhost_header) == 12, "vhost-user header is 12 bytes");
_Static_assert(sizeof(struct clibaio_vhost_memory_region) == 32, "memory region is 32 bytes");
_Static_assert(sizeof(struct clibaio_vhost_vring_addr) == 40, "vring address is 40 bytes");
_Static_assert(offsetof(struct clibaio_vhost_vring_addr, desc_user_addr) == 8, "desc @8");
_Static_assert(offsetof(struct clibaio_vhost_vring_addr, used_user_addr) == 16, "used @16");
_Static_assert(offsetof(struct clibaio_vhost_vring_addr, avail_user_addr) == 24, "avail @24");

_Static_assert(sizeof(struct clibaio_virtq_desc) == sizeof(struct vring_desc), "desc size");
_Static_assert(offsetof(struct clibaio_virtq_desc, len) == offsetof(struct vring_desc, len), "desc len");
_Static_assert(offsetof(struct clibaio_virtq_desc, flags) == offsetof(struct vring_desc, flags), "desc flags");
_Static_assert(offsetof(struct clibaio_virtq_desc, next) == offsetof(struct vring_desc, next), "desc next");
_Static_assert(sizeof(struct clibaio_virtq_used_elem) == sizeof(struct vring_used_elem), "used elem");
_Static_assert(offsetof(struct vring_avail, ring) == 4, "avail ring @4");
_Static_assert(offsetof(struct vring_used, ring) == 4, "used ring @4");
_Static_assert(VRING_DESC_F_NEXT == 1 && VRING_DESC_F_WRITE == 2 && VRING_DESC_F_INDIRECT == 4, "desc flags");
_Static_assert(VIRTIO_RING_F_INDIRECT_DESC == 28 && VIRTIO_RING_F_EVENT_IDX == 29, "ring features");

_Static_assert(sizeof(struct clibaio_virtio_blk_outhdr) == sizeof(struct virtio_blk_outhdr), "outhdr");
_Static_assert(offsetof(struct clibaio_virtio_blk_outhdr, sector) == offsetof(struct virtio_blk_outhdr, sector),
               "outhdr sector");
_Static_assert(sizeof(struct clibaio_virtio_blk_discard_write_zeroes) ==
                   sizeof(struct virtio_blk_discard_write_zeroes), "discard segment");
_Static_assert(offsetof(struct clibaio_virtio_blk_discard_write_zeroes, num_sectors) ==
                   offsetof(struct virtio_blk_discard_write_zeroes, num_sectors), "discard num_sectors");
_Static_assert(offsetof(struct clibaio_virtio_blk_discard_write_zeroes, flags) ==
                   offsetof(struct virtio_blk_discard_write_zeroes, flags), "discard flags");

// The inflight region of vhost-user.rst ("Inflight I/O tracking", split virtqueue).
_Static_assert(sizeof(struct clibaio_inflight_desc_split) == 16, "DescStateSplit is 16 bytes");
_Static_assert(offsetof(struct clibaio_inflight_desc_split, inflight) == 0, "inflight @0");
_Static_assert(offsetof(struct clibaio_inflight_desc_split, next) == 6, "next @6");
_Static_assert(offsetof(struct clibaio_inflight_desc_split, counter) == 8, "counter @8");
_Static_assert(offsetof(struct clibaio_inflight_queue_split, features) == 0, "features @0");
_Static_assert(offsetof(struct clibaio_inflight_queue_split, version) == 8, "version @8");
_Static_assert(offsetof(struct clibaio_inflight_queue_split, desc_num) == 10, "desc_num @10");
_Static_assert(offsetof(struct clibaio_inflight_queue_split, last_batch_head) == 12, "last_batch_head @12");
_Static_assert(offsetof(struct clibaio_inflight_queue_split, used_idx) == 14, "used_idx @14");
_Static_assert(offsetof(struct clibaio_inflight_queue_split, desc) == 16, "desc @16");
_Static_assert(sizeof(struct clibaio_vhost_inflight) == 24, "VhostUserInflight is 24 bytes");
_Static_assert(offsetof(struct clibaio_vhost_inflight, num_queues) == 16, "num_queues @16");
_Static_assert(offsetof(struct clibaio_vhost_inflight, queue_size) == 18, "queue_size @18");

// The virtio spec's offsets (5.2.4), held against the kernel's struct.
_Static_assert(offsetof(struct virtio_blk_config, capacity) == 0, "capacity @0");
_Static_assert(offsetof(struct virtio_blk_config, size_max) == 8, "size_max @8");
_Static_assert(offsetof(struct virtio_blk_config, seg_max) == 12, "seg_max @12");
_Static_assert(offsetof(struct virtio_blk_config, geometry) == 16, "geometry @16");
_Static_assert(offsetof(struct virtio_blk_config, blk_size) == 20, "blk_size @20");
_Static_assert(offsetof(struct virtio_blk_config, physical_block_exp) == 24, "physical_block_exp @24");
_Static_assert(offsetof(struct virtio_blk_config, min_io_size) == 26, "min_io_size @26");
_Static_assert(offsetof(struct virtio_blk_config, opt_io_size) == 28, "opt_io_size @28");
_Static_assert(offsetof(struct virtio_blk_config, wce) == 32, "wce @32");
_Static_assert(offsetof(struct virtio_blk_config, num_queues) == 34, "num_queues @34");
_Static_assert(offsetof(struct virtio_blk_config, max_discard_sectors) == 36, "max_discard_sectors @36");
_Static_assert(offsetof(struct virtio_blk_config, max_discard_seg) == 40, "max_discard_seg @40");
_Static_assert(offsetof(struct virtio_blk_config, discard_sector_alignment) == 44, "discard_sector_alignment @44");
_Static_assert(offsetof(struct virtio_blk_config, max_write_zeroes_sectors) == 48, "max_write_zeroes_sectors @48");
_Static_assert(offsetof(struct virtio_blk_config, max_write_zeroes_seg) == 52, "max_write_zeroes_seg @52");
_Static_assert(offsetof(struct virtio_blk_config, write_zeroes_may_unmap) == 56, "write_zeroes_may_unmap @56");
_Static_assert(offsetof(struct virtio_blk_config, max_secure_erase_sectors) == 60, "secure erase @60");
_Static_assert(VIRTIO_BLK_T_IN == 0 && VIRTIO_BLK_T_OUT == 1 && VIRTIO_BLK_T_FLUSH == 4, "blk types");
_Static_assert(VIRTIO_BLK_T_GET_ID == 8 && VIRTIO_BLK_T_DISCARD == 11 && VIRTIO_BLK_T_WRITE_ZEROES == 13,
               "blk types");
_Static_assert(VIRTIO_BLK_S_OK == 0 && VIRTIO_BLK_S_IOERR == 1 && VIRTIO_BLK_S_UNSUPP == 2, "blk statuses");
_Static_assert(VIRTIO_BLK_ID_BYTES == 20, "GET_ID is 20 bytes");

const uint32_t clibaio_vblk_cfg_capacity = offsetof(struct virtio_blk_config, capacity);
const uint32_t clibaio_vblk_cfg_size_max = offsetof(struct virtio_blk_config, size_max);
const uint32_t clibaio_vblk_cfg_seg_max = offsetof(struct virtio_blk_config, seg_max);
const uint32_t clibaio_vblk_cfg_geometry = offsetof(struct virtio_blk_config, geometry);
const uint32_t clibaio_vblk_cfg_blk_size = offsetof(struct virtio_blk_config, blk_size);
const uint32_t clibaio_vblk_cfg_physical_block_exp = offsetof(struct virtio_blk_config, physical_block_exp);
const uint32_t clibaio_vblk_cfg_min_io_size = offsetof(struct virtio_blk_config, min_io_size);
const uint32_t clibaio_vblk_cfg_opt_io_size = offsetof(struct virtio_blk_config, opt_io_size);
const uint32_t clibaio_vblk_cfg_wce = offsetof(struct virtio_blk_config, wce);
const uint32_t clibaio_vblk_cfg_num_queues = offsetof(struct virtio_blk_config, num_queues);
const uint32_t clibaio_vblk_cfg_max_discard_sectors = offsetof(struct virtio_blk_config, max_discard_sectors);
const uint32_t clibaio_vblk_cfg_max_discard_seg = offsetof(struct virtio_blk_config, max_discard_seg);
const uint32_t clibaio_vblk_cfg_discard_sector_alignment =
    offsetof(struct virtio_blk_config, discard_sector_alignment);
const uint32_t clibaio_vblk_cfg_max_write_zeroes_sectors =
    offsetof(struct virtio_blk_config, max_write_zeroes_sectors);
const uint32_t clibaio_vblk_cfg_max_write_zeroes_seg = offsetof(struct virtio_blk_config, max_write_zeroes_seg);
const uint32_t clibaio_vblk_cfg_write_zeroes_may_unmap =
    offsetof(struct virtio_blk_config, write_zeroes_may_unmap);
const uint32_t clibaio_vblk_cfg_secure_erase_start = offsetof(struct virtio_blk_config, max_secure_erase_sectors);

// MARK: - AF_UNIX SOCK_STREAM messages

#define CLIBAIO_VHOST_MAX_CMSG_FDS 16

static int64_t monotonic_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/// Reads exactly `len` bytes. Once a message has begun (`*deadline` != 0, set when its first
/// bytes arrive), every further read waits only until that deadline: a peer that drips a
/// message a byte at a time cannot hold the caller longer than `deadline_ms` per message
/// (SO_RCVTIMEO alone bounds each read, not their sum).
static ssize_t recv_exact(int fd, void *buf, size_t len, int *fds, int max_fds, int *nfds, int64_t *deadline,
                          int deadline_ms) {
    size_t done = 0;
    while (done < len) {
        if (*deadline != 0 && deadline_ms > 0) {
            int64_t left = *deadline - monotonic_ms();
            if (left <= 0) return -ETIMEDOUT;
            struct pollfd p = {fd, POLLIN, 0};
            int r = poll(&p, 1, (int)left);
            if (r == 0) return -ETIMEDOUT;
            if (r < 0) {
                if (errno == EINTR) continue;
                return -errno;
            }
        }
        union {
            char buf[CMSG_SPACE(sizeof(int) * CLIBAIO_VHOST_MAX_CMSG_FDS)];
            struct cmsghdr align;
        } control;
        struct iovec iov = {(char *)buf + done, len - done};
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof(control.buf);
        ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        clibaio_scm_collect(&msg, fds, max_fds, nfds);
        if (msg.msg_flags & MSG_CTRUNC) (*nfds) += CLIBAIO_VHOST_MAX_CMSG_FDS;  // more than we can hold
        if (n == 0) return done == 0 ? 0 : -ECONNRESET;
        if (*deadline == 0) *deadline = monotonic_ms() + deadline_ms;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

ssize_t clibaio_vhost_recv_header(int fd, void *buf, size_t len, int *fds, int max_fds, int *nfds, int64_t *deadline,
                                  int deadline_ms) {
    *nfds = 0;
    *deadline = 0;
    return recv_exact(fd, buf, len, fds, max_fds, nfds, deadline, deadline_ms);
}

ssize_t clibaio_vhost_recv_payload(int fd, void *buf, size_t len, int *stray_fds, int64_t *deadline,
                                   int deadline_ms) {
    *stray_fds = 0;
    if (len == 0) return 0;
    ssize_t n = recv_exact(fd, buf, len, NULL, 0, stray_fds, deadline, deadline_ms);
    return n == 0 ? -ECONNRESET : n;
}

ssize_t clibaio_vhost_send(int fd, const void *buf, size_t len, const int *fds, int nfds) {
    union {
        char buf[CMSG_SPACE(sizeof(int) * CLIBAIO_VHOST_MAX_CMSG_FDS)];
        struct cmsghdr align;
    } control;
    if (nfds < 0 || nfds > CLIBAIO_VHOST_MAX_CMSG_FDS) return -EINVAL;
    size_t done = 0;
    while (done < len || (len == 0 && done == 0)) {
        struct iovec iov = {(char *)buf + done, len - done};
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (done == 0 && nfds > 0) clibaio_scm_attach(&msg, control.buf, fds, nfds);
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        done += (size_t)n;
        if (len == 0) break;
    }
    return (ssize_t)done;
}

int clibaio_stream_socketpair(int sv[2]) {
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 ? -errno : 0;
}

int clibaio_fd_size(int fd, uint64_t *size) {
    struct stat st;
    if (fstat(fd, &st) < 0) return -errno;
    *size = (uint64_t)st.st_size;
    return 0;
}

int clibaio_stream_set_blocking_timeouts(int fd, int milliseconds) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) return -errno;
    struct timeval tv = {milliseconds / 1000, (milliseconds % 1000) * 1000};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0) return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) return -errno;
    return 0;
}
