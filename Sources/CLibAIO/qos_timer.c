// The QoS timer: a one-shot CLOCK_MONOTONIC timerfd armed only while a limit holds consumption
// back (Engine+Throttle.swift). Its own file and names, so it merges apart from other timers.
#include "CLibAIO.h"

#include <errno.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

int clibaio_qos_timer_create(void) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int clibaio_qos_timer_arm(int fd, uint64_t deadline_ns) {
    struct itimerspec its = {0};
    // An absolute deadline of 0 would disarm; one already past fires at once.
    if (deadline_ns == 0) deadline_ns = 1;
    its.it_value.tv_sec = (time_t)(deadline_ns / 1000000000ULL);
    its.it_value.tv_nsec = (long)(deadline_ns % 1000000000ULL);
    return timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL) == 0 ? 0 : -errno;
}

int clibaio_qos_timer_disarm(int fd) {
    struct itimerspec its = {0};
    return timerfd_settime(fd, 0, &its, NULL) == 0 ? 0 : -errno;
}
