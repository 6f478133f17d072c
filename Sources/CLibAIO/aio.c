// libaio: context, submission, reaping, iocb preparation (libaio returns -errno and leaves errno alone).
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
