// CLibAIO: the C seam between tapdiskd and the kernel.
//
// Swift imports libaio's inline helpers directly, but GNU-only names (O_DIRECT, memfd, seals,
// statx DIO alignment), variadic calls, CMSG macros and packed structs (epoll_event) do not
// import. Everything here is a thin out-of-line wrapper that returns 0 / a count on success and
// -errno on failure, so Swift never has to read the thread-local errno.
//
// Never define _GNU_SOURCE here: the target defines it for the .c file only; defining it in a
// public header breaks Swift files that also import Glibc.
#ifndef CLIBAIO_H
#define CLIBAIO_H

#include <libaio.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

// MARK: - blkif ABI (Xen io/blkif.h, x86_64)

#define CLIBAIO_BLKIF_MAX_SEGMENTS 11
#define CLIBAIO_BLKIF_SLOT_SIZE 112
#define CLIBAIO_RING_HEADER_SIZE 64

struct clibaio_blkif_segment {
    uint32_t gref;
    uint8_t first_sect;
    uint8_t last_sect;
    uint16_t pad;
};

/// A request slot exactly as it lies in shared memory. Only ever used as a private copy.
struct clibaio_blkif_request {
    uint8_t operation;
    uint8_t nr_segments;
    uint16_t handle;
    uint32_t pad;
    uint64_t id;
    uint64_t sector_number;
    struct clibaio_blkif_segment seg[CLIBAIO_BLKIF_MAX_SEGMENTS];
};

/// The INDIRECT view of a request slot (Linux blkif_request_indirect): the segment descriptors
/// live in data pages named by `indirect_grefs`, up to 512 per page.
#define CLIBAIO_BLKIF_MAX_INDIRECT_PAGES 8
#define CLIBAIO_BLKIF_SEGMENTS_PER_INDIRECT_PAGE 512

struct clibaio_blkif_request_indirect {
    uint8_t operation;
    uint8_t indirect_op;
    uint16_t nr_segments;
    uint32_t pad0;
    uint64_t id;
    uint64_t sector_number;
    uint16_t handle;
    uint16_t pad1;
    uint32_t indirect_grefs[CLIBAIO_BLKIF_MAX_INDIRECT_PAGES];
    uint8_t pad2[52];
};

/// The 16 response bytes at the start of a slot.
struct clibaio_blkif_response {
    uint64_t id;
    uint8_t operation;
    uint8_t pad0;
    int16_t status;
    uint32_t pad1;
};

/// Copies one request slot out of shared memory exactly once (XSA-155). The compiler barrier
/// keeps later reads on the private copy; nothing re-reads the slot.
void clibaio_blkif_copy_request(struct clibaio_blkif_request *dst, const void *slot);
/// Writes all 16 response bytes (padding zeroed, XSA-216) and nothing else of the slot.
void clibaio_blkif_write_response(void *slot, uint64_t id, uint8_t operation, int16_t status);
/// The discard view of a request: `nr_sectors` at offset 24.
uint64_t clibaio_blkif_discard_sectors(const struct clibaio_blkif_request *req);
/// Copies `count` segment descriptors out of an indirect page in shared memory exactly once
/// (XSA-155, as for slots); only the private copy is validated and used.
void clibaio_blkif_copy_segments(struct clibaio_blkif_segment *dst, const void *page, unsigned count);

// MARK: - libaio

int clibaio_setup(unsigned nr_events, io_context_t *ctx);
int clibaio_destroy(io_context_t ctx);
/// io_submit: number accepted (may be fewer than nr), or -errno when none was accepted.
int clibaio_submit(io_context_t ctx, long nr, struct iocb **iocbs);
/// Non-blocking io_getevents: number reaped, or -errno.
int clibaio_getevents(io_context_t ctx, long max_nr, struct io_event *events);
/// 1 when the kernel's completion ring behind `ctx` can be read from user space (aio_ring.c).
int clibaio_user_reap_supported(io_context_t ctx);
/// 1 when completions are waiting in the ring (no syscall).
int clibaio_user_pending(io_context_t ctx);
/// Like clibaio_getevents, from the mapped ring without a syscall; -EINVAL for a corrupt ring.
int clibaio_user_reap(io_context_t ctx, long max_nr, struct io_event *events);
/// The CPU's spin-wait hint (x86 `pause`).
void clibaio_cpu_relax(void);
/// Pins the calling thread to `cpus` (sched.c). 0 or -errno.
int clibaio_set_affinity(const int *cpus, int count);
/// The CPU the calling thread runs on now, or -1.
int clibaio_current_cpu(void);
void clibaio_prep_preadv(struct iocb *cb, int fd, const struct iovec *iov, int iovcnt,
                         int64_t offset, int resfd, uint64_t data);
void clibaio_prep_pwritev(struct iocb *cb, int fd, const struct iovec *iov, int iovcnt,
                          int64_t offset, int resfd, uint64_t data);
void clibaio_prep_fdsync(struct iocb *cb, int fd, int resfd, uint64_t data);
uint64_t clibaio_event_data(const struct io_event *ev);
int64_t clibaio_event_res(const struct io_event *ev);
int clibaio_iocb_opcode(const struct iocb *cb);
/// The opcode of the iocb an event completes (-1 when the event carries none).
int clibaio_event_opcode(const struct io_event *ev);
/// Rewrites an event's result (the fault-injection seam uses this in test builds).
void clibaio_event_set_res(struct io_event *ev, int64_t res);

extern const int clibaio_IO_CMD_PREADV;
extern const int clibaio_IO_CMD_PWRITEV;
extern const int clibaio_IO_CMD_FDSYNC;

// MARK: - files and block devices

extern const int clibaio_O_DIRECT;
extern const int clibaio_O_DSYNC;
extern const int clibaio_O_CLOEXEC;

/// open(2) without the variadic mode argument.
int clibaio_open(const char *path, int flags, unsigned mode);
/// fallocate(PUNCH_HOLE | KEEP_SIZE): 0 or -errno.
int clibaio_punch_hole(int fd, int64_t offset, int64_t length);
/// fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE): 0 or -errno.
int clibaio_zero_range(int fd, int64_t offset, int64_t length);
/// statx STATX_DIOALIGN: 0 and the alignments (0 when the file does not support O_DIRECT or the
/// kernel does not report it), or -errno.
int clibaio_dio_alignment(int fd, uint32_t *offset_align, uint32_t *mem_align);
int clibaio_blk_size_bytes(int fd, uint64_t *bytes);
int clibaio_blk_logical_sector_size(int fd, uint32_t *size);
int clibaio_blk_physical_sector_size(int fd, uint32_t *size);
/// BLKDISCARD on a block device range: 0 or -errno.
int clibaio_blk_discard(int fd, uint64_t offset, uint64_t length);
/// posix_fallocate: 0 or -errno (posix_fallocate returns the error, it does not set errno).
int clibaio_posix_fallocate(int fd, int64_t offset, int64_t length);
/// Whether the filesystem holding `directory` can punch holes, asked of an unnamed O_TMPFILE
/// there (never of the image, whose mtime/ctime a punch changes even past EOF): 1 yes, 0 no
/// (EOPNOTSUPP), -errno when no temporary file can be made there.
int clibaio_probe_punch_hole_in(const char *directory);
/// F_OFD_SETLK over the whole file: a write lock when `exclusive`, else a read lock. 0, or -errno
/// (-EAGAIN/-EACCES when another open file description holds a conflicting lock).
int clibaio_ofd_lock(int fd, int exclusive);
/// F_OFD_GETLK over the whole file: 1 when a shared (read) lock would conflict, 2 when an
/// exclusive (write) lock would, 0 when none, or -errno. `*pid` gets l_pid (-1 for OFD locks,
/// the owner's pid for a classic POSIX lock).
int clibaio_ofd_conflict(int fd, int exclusive, int *pid);
extern const int clibaio_O_EXCL;
/// fstatfs f_type (the filesystem's magic number) in *type: 0 or -errno.
int clibaio_fs_type(int fd, uint64_t *type);

// MARK: - memfd and seals

extern const unsigned clibaio_MFD_CLOEXEC;
extern const unsigned clibaio_MFD_ALLOW_SEALING;
extern const int clibaio_F_SEAL_SEAL;
extern const int clibaio_F_SEAL_SHRINK;
extern const int clibaio_F_SEAL_GROW;
extern const int clibaio_F_SEAL_WRITE;
extern const int clibaio_F_SEAL_FUTURE_WRITE;

int clibaio_memfd_create(const char *name, unsigned flags);
int clibaio_add_seals(int fd, int seals);
/// F_GET_SEALS: the seal mask, or -errno (-EINVAL for a file without the seals interface).
int clibaio_get_seals(int fd);

// MARK: - eventfd, epoll, timerfd, signalfd

extern const int clibaio_EFD_NONBLOCK;
extern const int clibaio_EFD_CLOEXEC;
extern const int clibaio_EFD_SEMAPHORE;

int clibaio_eventfd(unsigned initval, int flags);
/// Classifies an fd from /proc/self/fdinfo: 1 eventfd, 0 not an eventfd, -errno on failure.
/// `semaphore` is set to 1 only when the kernel prints `eventfd-semaphore: 1`.
int clibaio_fd_is_eventfd(int fd, int *semaphore);
/// 1 when the open file has O_NONBLOCK, 0 when it does not, -errno on failure.
int clibaio_fd_is_nonblocking(int fd);
/// Whether two eventfds are one open file (`kcmp(KCMP_FILE)`, or, where kcmp is not allowed,
/// equal `eventfd-id`s in /proc/self/fdinfo): 1 the same, 0 different, -errno undecidable.
int clibaio_eventfds_are_same_file(int a, int b);
/// Writes the u64 1 to an eventfd. 0 or -errno (-EAGAIN when the counter is saturated).
int clibaio_eventfd_signal(int fd);
/// Reads an eventfd's counter (0 and *value, or -errno; -EAGAIN when it is zero and non-blocking).
int clibaio_eventfd_drain(int fd, uint64_t *value);

extern const uint32_t clibaio_EPOLLIN;
extern const uint32_t clibaio_EPOLLOUT;
extern const uint32_t clibaio_EPOLLERR;
extern const uint32_t clibaio_EPOLLHUP;
extern const uint32_t clibaio_EPOLLRDHUP;

int clibaio_epoll_create(void);
int clibaio_epoll_add(int epfd, int fd, uint32_t events, uint64_t token);
int clibaio_epoll_modify(int epfd, int fd, uint32_t events, uint64_t token);
int clibaio_epoll_remove(int epfd, int fd);
/// epoll_wait copying the packed epoll_event out: number ready, or -errno (EINTR included).
int clibaio_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int max, int timeout_ms);

/// A disarmed CLOCK_MONOTONIC timerfd (non-blocking, cloexec), or -errno.
int clibaio_timerfd_oneshot(void);
/// Arms it to fire once at the absolute CLOCK_MONOTONIC time `deadline_ns`; 0 disarms. 0 or -errno.
int clibaio_timerfd_arm(int fd, uint64_t deadline_ns);

// MARK: - Watching the image (watch.c)

/// An inotify fd (non-blocking, cloexec) watching the inode open as `image_fd` for IN_MODIFY
/// (write, truncate, fallocate by anyone) and IN_ATTRIB, or -errno (EMFILE: the user's
/// fs.inotify.max_user_instances is used up).
int clibaio_inotify_image(int image_fd);
/// Reads every queued inotify event: how many there were (0: none), or -errno.
int clibaio_inotify_drain(int fd);
/// A NETLINK_KOBJECT_UEVENT socket bound to the kernel's uevent group (non-blocking, cloexec),
/// or -errno.
int clibaio_uevent_socket(void);
/// Reads every queued uevent: 1 when one was a block device `change` (a resize raises one) or
/// some were lost (ENOBUFS), 0 when none was, or -errno.
int clibaio_uevent_drain(int fd);
/// 1 when the process is in the initial user namespace (where kernel uevents arrive), else 0.
int clibaio_in_initial_user_namespace(void);
/// Blocks the given signals for the process and returns a signalfd for them.
int clibaio_signalfd(const int *signals, int count);
/// Reads one signal number from a signalfd: the signal, or -errno.
int clibaio_signalfd_read(int fd);

// MARK: - AF_UNIX SOCK_SEQPACKET

/// Raises the soft RLIMIT_NOFILE to the hard limit; *soft and *hard get the limits now in force.
/// 0 or -errno.
int clibaio_raise_nofile_limit(uint64_t *soft, uint64_t *hard);

extern const int clibaio_MSG_TRUNC;
extern const int clibaio_MSG_CTRUNC;

/// Binds and listens (non-blocking, cloexec). -errno on failure.
int clibaio_unix_listen(const char *path, int backlog);
/// Connects (blocking, cloexec) to a SEQPACKET socket. -errno on failure.
int clibaio_unix_connect(const char *path);
int clibaio_accept(int listen_fd);
/// 1 when fd is a listening AF_UNIX SOCK_SEQPACKET socket (socket activation), 0 otherwise.
int clibaio_is_seqpacket_listener(int fd);
/// SOCK_SEQPACKET (the control socket) or SOCK_STREAM (a vhost-user socket) when fd is a
/// listening AF_UNIX socket of that type, 0 otherwise: tells socket-activated fds apart.
int clibaio_unix_listener_type(int fd);
/// recvmsg of one datagram with up to `max_fds` SCM_RIGHTS fds (all received fds are installed
/// cloexec and returned, even beyond max_fds they are closed here). Returns the datagram's real
/// length (may exceed `len`: truncated), or -errno. `*flags_out` gets msg_flags.
ssize_t clibaio_recv_datagram(int fd, void *buf, size_t len, int *fds, int max_fds, int *nfds,
                              int *flags_out);
/// sendmsg of one datagram with optional fds (MSG_NOSIGNAL; MSG_DONTWAIT when nonblocking).
ssize_t clibaio_send_datagram(int fd, const void *buf, size_t len, const int *fds, int nfds,
                              int nonblocking);
/// 1 when the peer hung up (POLLHUP/POLLRDHUP), 0 otherwise, -errno on failure.
int clibaio_peer_hung_up(int fd);

// MARK: - systemd

/// sd_notify(3) without libsystemd: sends `state` to $NOTIFY_SOCKET. 0 when sent or when no
/// socket is configured (returns 1 in that case), -errno on failure.
int clibaio_sd_notify(const char *state);

// MARK: - QoS timer (qos_timer.c)

/// A one-shot CLOCK_MONOTONIC timerfd (non-blocking, cloexec), disarmed. -errno on failure.
int clibaio_qos_timer_create(void);
/// Arms it to fire once at `deadline_ns` on CLOCK_MONOTONIC (absolute). -errno on failure.
int clibaio_qos_timer_arm(int fd, uint64_t deadline_ns);
/// Disarms it. -errno on failure.
int clibaio_qos_timer_disarm(int fd);

// The vhost-user-blk front (its own header; SwiftPM uses this file as the umbrella).
#include "CLibAIOVhost.h"
// The NBD front's sockets (its own header too).
#include "CLibAIONBD.h"

#endif
