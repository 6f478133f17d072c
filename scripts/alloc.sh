#!/usr/bin/env bash
# Heap allocations per request on the data path, measured two ways (run as root):
#
#  1. In process, release build: Tests/TapDiskTests/Engine/AllocationTests.swift counts malloc/calloc/
#     realloc/memalign calls on the engine's thread over 10,000 steady-state 4 KiB requests. The
#     test executable must export its counting `malloc` (-Xlinker --export-dynamic) for libswiftCore
#     to call it; -enable-testing for @testable; TAPDISK_FAULT_INJECTION because the test target's
#     fault tests need the seam (the seam is one predictable branch per io_submit/io_getevents).
#  2. The real daemon and the real bench client: uprobes on glibc's allocator entry points
#     (perf probe), counted with `perf stat -p PID` over a 2 s window in the middle of a
#     `tapdiskd bench` run, divided by the requests completed in that window.
#
#   scripts/alloc.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH
[[ $(id -u) -eq 0 ]] || { echo "alloc.sh: run as root" >&2; exit 1; }
"$repo/scripts/setup.sh"
cd "$repo"

echo "## 1. In-process, release build (AllocationTests)"
swift test -c release -Xswiftc -enable-testing -Xswiftc -DTAPDISK_FAULT_INJECTION -Xlinker --export-dynamic \
    --scratch-path "$repo/.build/alloc-release" --filter AllocationTests 2>&1 \
    | grep -E "allocations-per-request|counter self-check|✘|✔ Suite|error:" || true

echo
echo "## 2. Real daemon and client (perf uprobes on libc malloc/calloc/realloc/posix_memalign)"
command -v perf >/dev/null || { echo "perf not installed (apt-get install linux-perf)"; exit 1; }
swift build -c release --product tapdiskd >/dev/null
tapdiskd="$repo/.build/release/tapdiskd"
libc=$(ldd "$tapdiskd" | awk '/libc.so.6/ {print $3}')
events=()
for f in malloc calloc realloc posix_memalign; do
    perf probe -q -x "$libc" --add "$f" 2>/dev/null || true
    events+=(-e "probe_libc:$f")
done
work=$(mktemp -d /tmp/tapdisk-alloc.XXXXXX)
image=$work/img
dd if=/dev/urandom of="$image" bs=4M count=64 oflag=direct status=none
"$tapdiskd" --image "$image" --socket "$work/sock" --cache none --log-level warning &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do [[ -S $work/sock ]] && break; sleep 0.05; done

total() { awk -F, '/probe_libc/ {s += $1} END {print s + 0}' "$1"; }
for c in "randread 1" "randwrite 1" "randread 32" "randwrite 32"; do
    read -r rw depth <<<"$c"
    "$tapdiskd" bench --socket "$work/sock" --rw "$rw" --iodepth "$depth" --seconds 6 --json >"$work/bench.json" &
    bench=$!
    sleep 2
    perf stat -x, "${events[@]}" -p "$daemon" -o "$work/daemon.txt" -- sleep 2 &
    perf_daemon=$!
    perf stat -x, "${events[@]}" -p "$bench" -o "$work/client.txt" -- sleep 2
    wait "$perf_daemon"
    wait "$bench"
    iops=$(python3 -c "import json; print(json.load(open('$work/bench.json'))['iops'])")
    d=$(total "$work/daemon.txt")
    cl=$(total "$work/client.txt")
    python3 -c "
r = $iops * 2
print('$rw 4k QD$depth: ~%d requests in the 2 s window; daemon %d allocations (%.6f/request), bench client %d (%.6f/request)' % (r, $d, $d / r, $cl, $cl / r))"
done
echo "(the daemon's 500 ms timer accounts for a few allocations a second regardless of load)"
