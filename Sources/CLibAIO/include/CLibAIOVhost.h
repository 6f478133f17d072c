// CLibAIOVhost: the C seam for the vhost-user-blk front (Sources/TapDisk/VhostUser).
//
// The wire and ring layouts are little-endian and naturally aligned; the structs here mirror
// the vhost-user spec (QEMU docs/interop/vhost-user.rst), the virtio 1.x split virtqueue and
// <linux/virtio_blk.h>. vhost.c checks every size and offset with _Static_assert against the
// kernel's uapi headers, which Swift never imports (they would drag __virtio types along).
//
// Guest memory is shared with a hostile writer, so the accessors below read each shared field
// with a single access (memcpy into a private copy, or __atomic loads) and order publication
// with explicit acquire/release/seq_cst fences. They are static inline so the hot path pays no
// call.
#ifndef CLIBAIO_VHOST_H
#define CLIBAIO_VHOST_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <sys/types.h>

// MARK: - vhost-user wire structs

struct clibaio_vhost_header {
    uint32_t request;
    uint32_t flags;
    uint32_t size;
};

struct clibaio_vhost_memory_region {
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
    uint64_t mmap_offset;
};

struct clibaio_vhost_vring_addr {
    uint32_t index;
    uint32_t flags;
    uint64_t desc_user_addr;
    uint64_t used_user_addr;
    uint64_t avail_user_addr;
    uint64_t log_guest_addr;
};

// MARK: - split virtqueue structs

struct clibaio_virtq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct clibaio_virtq_used_elem {
    uint32_t id;
    uint32_t len;
};

// MARK: - inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, split ring)

/// One descriptor's slot in the inflight region ("DescStateSplit" in vhost-user.rst). Only the
/// slots of head descriptors are used.
struct clibaio_inflight_desc_split {
    uint8_t inflight;
    uint8_t padding[5];
    uint16_t next;
    uint64_t counter;
};

/// One queue's inflight region ("QueueRegionSplit"); `desc_num` slots follow the header.
struct clibaio_inflight_queue_split {
    uint64_t features;
    uint16_t version;
    uint16_t desc_num;
    uint16_t last_batch_head;
    uint16_t used_idx;
    struct clibaio_inflight_desc_split desc[];
};

/// GET_INFLIGHT_FD / SET_INFLIGHT_FD payload (QEMU's VhostUserInflight, 24 bytes with padding).
struct clibaio_vhost_inflight {
    uint64_t mmap_size;
    uint64_t mmap_offset;
    uint16_t num_queues;
    uint16_t queue_size;
};

static inline void clibaio_store_u64_relaxed(void *p, uint64_t v) {
    __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELAXED);
}

static inline uint64_t clibaio_load_u64_relaxed(const void *p) {
    return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
}

static inline uint8_t clibaio_load_u8_relaxed(const void *p) {
    return __atomic_load_n((const uint8_t *)p, __ATOMIC_RELAXED);
}

// MARK: - virtio-blk structs

struct clibaio_virtio_blk_outhdr {
    uint32_t type;
    uint32_t ioprio;
    uint64_t sector;
};

struct clibaio_virtio_blk_discard_write_zeroes {
    uint64_t sector;
    uint32_t num_sectors;
    uint32_t flags;
};

/// Offsets and size of struct virtio_blk_config as <linux/virtio_blk.h> lays it out (computed
/// with offsetof in vhost.c, so a test can hold the Swift encoder to the kernel's layout).
extern const uint32_t clibaio_vblk_cfg_capacity;
extern const uint32_t clibaio_vblk_cfg_size_max;
extern const uint32_t clibaio_vblk_cfg_seg_max;
extern const uint32_t clibaio_vblk_cfg_geometry;
extern const uint32_t clibaio_vblk_cfg_blk_size;
extern const uint32_t clibaio_vblk_cfg_physical_block_exp;
extern const uint32_t clibaio_vblk_cfg_min_io_size;
extern const uint32_t clibaio_vblk_cfg_opt_io_size;
extern const uint32_t clibaio_vblk_cfg_wce;
extern const uint32_t clibaio_vblk_cfg_num_queues;
extern const uint32_t clibaio_vblk_cfg_max_discard_sectors;
extern const uint32_t clibaio_vblk_cfg_max_discard_seg;
extern const uint32_t clibaio_vblk_cfg_discard_sector_alignment;
extern const uint32_t clibaio_vblk_cfg_max_write_zeroes_sectors;
extern const uint32_t clibaio_vblk_cfg_max_write_zeroes_seg;
extern const uint32_t clibaio_vblk_cfg_write_zeroes_may_unmap;
/// offsetof(max_secure_erase_sectors): where the fields this backend offers end.
extern const uint32_t clibaio_vblk_cfg_secure_erase_start;

// MARK: - shared-memory accessors (single access, explicit ordering)

/// Copies one descriptor out of shared memory exactly once; later reads use the copy only.
static inline void clibaio_virtq_copy_desc(struct clibaio_virtq_desc *dst, const void *src) {
    memcpy(dst, src, sizeof(*dst));
    __asm__ __volatile__("" ::: "memory");
}

/// Copies `len` bytes out of shared memory once (headers, discard segments).
static inline void clibaio_shared_copy(void *dst, const void *src, size_t len) {
    memcpy(dst, src, len);
    __asm__ __volatile__("" ::: "memory");
}

static inline uint16_t clibaio_load_u16_acquire(const void *p) {
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
}

static inline uint16_t clibaio_load_u16_relaxed(const void *p) {
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED);
}

static inline void clibaio_store_u16_release(void *p, uint16_t v) {
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE);
}

static inline void clibaio_store_u16_relaxed(void *p, uint16_t v) {
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELAXED);
}

static inline void clibaio_store_u32_relaxed(void *p, uint32_t v) {
    __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELAXED);
}

static inline void clibaio_store_u8_relaxed(void *p, uint8_t v) {
    __atomic_store_n((uint8_t *)p, v, __ATOMIC_RELAXED);
}

/// The full barrier between publishing used->idx and reading used_event / avail flags.
static inline void clibaio_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void clibaio_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }

// MARK: - AF_UNIX SOCK_STREAM messages (vhost-user)

/// Receives exactly `len` header bytes, collecting SCM_RIGHTS fds (cloexec) from every
/// control message on the way. `*nfds` counts all fds received; those beyond `max_fds` are
/// closed here. Returns `len`, 0 on EOF before the first byte, -ECONNRESET on EOF mid-header,
/// or -errno. The first read blocks; once bytes have arrived, the rest of the message (this
/// header and `clibaio_vhost_recv_payload` with the same `*deadline`) must arrive within
/// `deadline_ms` (0: no limit), else -ETIMEDOUT.
ssize_t clibaio_vhost_recv_header(int fd, void *buf, size_t len, int *fds, int max_fds, int *nfds, int64_t *deadline,
                                  int deadline_ms);
/// Receives exactly `len` payload bytes; fds arriving here are closed and counted in
/// `*stray_fds`. Returns `len`, -ECONNRESET on EOF, -ETIMEDOUT past the header's deadline, or
/// -errno.
ssize_t clibaio_vhost_recv_payload(int fd, void *buf, size_t len, int *stray_fds, int64_t *deadline,
                                   int deadline_ms);
/// Sends `len` bytes (fds, if any, attached to the first byte); loops over short writes.
ssize_t clibaio_vhost_send(int fd, const void *buf, size_t len, const int *fds, int nfds);
/// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC): 0 or -errno.
int clibaio_stream_socketpair(int sv[2]);
/// Binds and listens on an AF_UNIX SOCK_STREAM socket (cloexec). The listening fd or -errno.
int clibaio_stream_listen(const char *path, int backlog);
/// Connects an AF_UNIX SOCK_STREAM socket (blocking, cloexec). The fd or -errno.
int clibaio_stream_connect(const char *path);
/// Makes a connected socket blocking with receive and send timeouts, so a peer that stalls in
/// the middle of a message costs at most `milliseconds` before the read fails. 0 or -errno.
int clibaio_stream_set_blocking_timeouts(int fd, int milliseconds);
/// fstat's st_size: 0 and *size, or -errno.
int clibaio_fd_size(int fd, uint64_t *size);

#endif
