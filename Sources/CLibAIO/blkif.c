// The blkif ring ABI: layouts checked at compile time, the copy-once and response writers.
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
