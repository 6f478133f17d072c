#!/usr/bin/env bash
# tapdiskd against fio on the same image, in the same run.
#
#   scripts/bench.sh [SECONDS [ROUNDS]]     (default 5 s per case, 3 rounds; run as root)
#
# Builds release, writes a 1 GiB image (every block allocated), then scripts/bench.py runs, for
# each placement and case, fio --ioengine=libaio --direct=1 and `tapdiskd bench` against one
# `tapdiskd --cache none` daemon, alternating, and prints Markdown tables of medians (IOPS, ratio,
# p50/p99, daemon CPU per 1,000 I/Os) on stdout; progress goes to stderr. Environment:
# BENCH_IMAGE (default /var/tmp/tapdisk-bench.img), BENCH_RAMP (default 1), BENCH_POLL_US
# (the daemon's --poll-us, default 0), BENCH_PLACEMENT (default colocated,split; pinN puts all
# three on CPU N), BENCH_CASES (comma-separated names from scripts/bench.py), BENCH_KEEP_IMAGE=1
# keeps the image.
#
# BENCH_SUITE (default blkif) picks what runs: `blkif` is the above; `nbd` runs
# scripts/bench-nbd.py instead: the NBD servers tapdiskd (`serve --nbd`), qemu-nbd and nbdkit on
# the same image with one client, fio's nbd engine, plus the fio libaio reference, alternating
# (BENCH_NBD_SERVERS, default tapdiskd,qemu-nbd,nbdkit; BENCH_NBD_CASES, names from
# scripts/bench-nbd.py; BENCH_NBD_PLACEMENT, default colocated); `blkif,nbd` runs both. The
# release build is skipped when neither the blkif suite nor the tapdiskd NBD server is asked for.
set -euo pipefail

seconds=${1:-5}
rounds=${2:-3}
ramp=${BENCH_RAMP:-1}
image=${BENCH_IMAGE:-/var/tmp/tapdisk-bench.img}
repo=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH

log() { printf '%s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "bench.sh: run as root"; exit 1; }
"$repo/scripts/setup.sh"
command -v python3 >/dev/null || { log "bench.sh: python3 is needed to read fio's JSON"; exit 1; }

suite=${BENCH_SUITE:-blkif}
nbd_servers=${BENCH_NBD_SERVERS:-tapdiskd,qemu-nbd,nbdkit}
tapdiskd="$repo/.build/release/tapdiskd"
if [[ ,$suite, == *,blkif,* || ( ,$suite, == *,nbd,* && ,$nbd_servers, == *,tapdiskd,* ) ]]; then
    log "building (release)..."
    (cd "$repo" && swift build -c release --product tapdiskd >&2)
fi

size=$((1 << 30))
if [[ ! -f $image || $(stat -c %s "$image") -ne $size ]]; then
    log "writing a 1 GiB image at $image (every block allocated)..."
    rm -f "$image"
    dd if=/dev/urandom of="$image" bs=4M count=256 oflag=direct status=none
fi
sync
trap '[[ ${BENCH_KEEP_IMAGE:-0} == 1 ]] || rm -f "$image"' EXIT

if [[ ,$suite, == *,blkif,* ]]; then
    python3 "$repo/scripts/bench.py" --tapdiskd "$tapdiskd" --image "$image" --seconds "$seconds" --ramp "$ramp" \
        --rounds "$rounds" --poll-us "${BENCH_POLL_US:-0}" --placement "${BENCH_PLACEMENT:-colocated,split}" \
        ${BENCH_CASES:+--cases "$BENCH_CASES"}
fi
if [[ ,$suite, == *,nbd,* ]]; then
    python3 "$repo/scripts/bench-nbd.py" --tapdiskd "$tapdiskd" --image "$image" --seconds "$seconds" \
        --ramp "$ramp" --rounds "$rounds" --poll-us "${BENCH_POLL_US:-0}" --servers "$nbd_servers" \
        --placement "${BENCH_NBD_PLACEMENT:-colocated}" ${BENCH_NBD_CASES:+--cases "$BENCH_NBD_CASES"}
fi
