// CPU affinity (GNU-only cpu_set_t macros, which Swift cannot import).
#include "CLibAIO.h"

#include <errno.h>
#include <sched.h>

int clibaio_set_affinity(const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) return -EINVAL;
        CPU_SET(cpus[i], &set);
    }
    return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : -errno;
}

int clibaio_current_cpu(void) { return sched_getcpu(); }
