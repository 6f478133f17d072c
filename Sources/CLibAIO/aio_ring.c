// Reaping Linux AIO completions from the ring the kernel maps into the process, without a
// syscall (what fio's --userspace_reap does). An io_context_t is the address of that ring.
#include "CLibAIO.h"

#include <errno.h>
#include <stdint.h>

#define CLIBAIO_AIO_RING_MAGIC 0xa10a10a1u

/// The kernel's `struct aio_ring` (fs/aio.c), stable ABI since 2.6: user space may move `head`.
struct clibaio_aio_ring {
    unsigned id;
    unsigned nr;
    unsigned head;
    unsigned tail;
    unsigned magic;
    unsigned compat_features;
    unsigned incompat_features;
    unsigned header_length;
    struct io_event io_events[];
};

_Static_assert(sizeof(struct clibaio_aio_ring) == 32, "aio_ring header is 32 bytes");
_Static_assert(sizeof(struct io_event) == 32, "io_event is 32 bytes");

static struct clibaio_aio_ring *ring_of(io_context_t ctx) { return (struct clibaio_aio_ring *)ctx; }

int clibaio_user_reap_supported(io_context_t ctx) {
    struct clibaio_aio_ring *ring = ring_of(ctx);
    return ring != 0 && ring->magic == CLIBAIO_AIO_RING_MAGIC && ring->incompat_features == 0 && ring->nr > 0 &&
           ring->header_length == sizeof(struct clibaio_aio_ring);
}

int clibaio_user_pending(io_context_t ctx) {
    struct clibaio_aio_ring *ring = ring_of(ctx);
    return __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE) != ring->head;
}

int clibaio_user_reap(io_context_t ctx, long max_nr, struct io_event *events) {
    struct clibaio_aio_ring *ring = ring_of(ctx);
    // The kernel publishes each event before it moves `tail` (release); we copy the events before
    // we move `head` (release), so the kernel never reuses a slot we are still reading. This
    // thread is the only consumer: io_getevents is never called concurrently with this.
    unsigned nr = ring->nr;
    unsigned head = ring->head;
    unsigned tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
    if (head >= nr || tail >= nr) return -EINVAL;
    long n = 0;
    while (n < max_nr && head != tail) {
        events[n++] = ring->io_events[head];
        head = head + 1 == nr ? 0 : head + 1;
    }
    if (n > 0) __atomic_store_n(&ring->head, head, __ATOMIC_RELEASE);
    return (int)n;
}

void clibaio_cpu_relax(void) { __builtin_ia32_pause(); }
