// stall-writer: the guest side of scripts/restart-stall.sh. Writes 4 KiB blocks to a block
// device with O_DIRECT, each followed by fdatasync (a virtio-blk FLUSH) and an O_DIRECT read-back
// that is compared, and reports every gap between two successive completions longer than a
// threshold: the I/O stall the guest saw while the daemon behind the disk restarted.
//
//   stall-writer DEVICE GAP_MS STOP_SECTOR
//
// Block k of the 256 blocks at 1 MiB holds (magic, k, sequence number) and a pattern derived
// from them, so the host can check the image afterwards without knowing the guest's order.
// Writing stops when STOP_SECTOR holds "STOP" (the host writes it into the image); the end
// reads every block back and compares it with the last sequence number written there.
//
// Output, one line each: "START", "GAP ms=<gap> at=<guest monotonic s> op=<write|flush|read> n=<completions>",
// "FAIL ..." for any error or mismatch, and at the end
// "SUMMARY completions=N writes=W errors=E mismatches=M verified=V".
// Built static by restart-stall.sh (cc -static -O2) and run as PID 1's child in scripts/guest.sh.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096
#define SLOTS 256
#define BASE (1u << 20)
#define MAGIC 0x5444535754414c4cull /* "TDSWTALL" */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double last, gap_s;
static unsigned long completions;

static void completed(const char *op) {
    double t = now();
    completions++;
    if (t - last > gap_s) {
        printf("GAP ms=%.1f at=%.3f op=%s n=%lu\n", (t - last) * 1000, t, op, completions);
        fflush(stdout);
    }
    last = t;
}

// Block contents: magic, slot, seq, then a xorshift stream seeded by (slot, seq).
static void fill(uint64_t *b, uint64_t slot, uint64_t seq) {
    b[0] = MAGIC;
    b[1] = slot;
    b[2] = seq;
    uint64_t x = (slot << 40) ^ seq ^ 0x9e3779b97f4a7c15ull;
    for (int i = 3; i < BLOCK / 8; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b[i] = x;
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: stall-writer DEVICE GAP_MS STOP_SECTOR\n");
        return 2;
    }
    gap_s = atof(argv[2]) / 1000;
    off_t stop = (off_t)atoll(argv[3]) * 512;
    int fd = open(argv[1], O_RDWR | O_DIRECT);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    uint64_t *w, *r;
    char *s;
    if (posix_memalign((void **)&w, BLOCK, BLOCK) || posix_memalign((void **)&r, BLOCK, BLOCK) ||
        posix_memalign((void **)&s, BLOCK, BLOCK))
        return 1;
    static uint64_t lastseq[SLOTS];
    unsigned long writes = 0, errors = 0, mismatches = 0;
    printf("START gap-ms=%s\n", argv[2]);
    fflush(stdout);
    last = now();
    for (uint64_t seq = 1;; seq++) {
        if (seq % 32 == 0) {
            if (pread(fd, s, 512, stop) == 512) {
                completed("read");
                if (memcmp(s, "STOP", 4) == 0) break;
            } else {
                printf("FAIL stop-read seq=%llu\n", (unsigned long long)seq);
                errors++;
            }
        }
        uint64_t slot = seq % SLOTS;
        off_t off = BASE + slot * BLOCK;
        fill(w, slot, seq);
        if (pwrite(fd, w, BLOCK, off) != BLOCK) {
            printf("FAIL write slot=%llu seq=%llu\n", (unsigned long long)slot, (unsigned long long)seq);
            errors++;
            continue;
        }
        completed("write");
        writes++;
        lastseq[slot] = seq;
        if (fdatasync(fd) != 0) {
            printf("FAIL flush seq=%llu\n", (unsigned long long)seq);
            errors++;
        } else {
            completed("flush");
        }
        if (pread(fd, r, BLOCK, off) != BLOCK) {
            printf("FAIL read slot=%llu seq=%llu\n", (unsigned long long)slot, (unsigned long long)seq);
            errors++;
        } else {
            completed("read");
            if (memcmp(w, r, BLOCK) != 0) {
                printf("FAIL mismatch slot=%llu seq=%llu\n", (unsigned long long)slot, (unsigned long long)seq);
                mismatches++;
            }
        }
        fflush(stdout);
    }
    unsigned long verified = 0;
    for (uint64_t slot = 0; slot < SLOTS; slot++) {
        if (!lastseq[slot]) continue;
        fill(w, slot, lastseq[slot]);
        if (pread(fd, r, BLOCK, BASE + slot * BLOCK) != BLOCK || memcmp(w, r, BLOCK) != 0) {
            printf("FAIL final slot=%llu seq=%llu\n", (unsigned long long)slot, (unsigned long long)lastseq[slot]);
            mismatches++;
        } else {
            verified++;
        }
    }
    printf("SUMMARY completions=%lu writes=%lu errors=%lu mismatches=%lu verified=%lu\n", completions, writes, errors,
           mismatches, verified);
    return errors || mismatches ? 1 : 0;
}
