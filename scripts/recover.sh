#!/usr/bin/env bash
# `tapdiskd bench --recover` under a supervisor that restarts the daemon and a killer that
# `kill -9`s it, as docs/operations.md describes.
#
#   scripts/recover.sh [KILLS [INTERVAL_S]]     (default 10 kills, one every 1.5 s)
#
# Uses .build/release/tapdiskd if it exists (else debug; TAPDISKD=PATH overrides), a 1 GiB sparse
# image at RECOVER_IMAGE (default /var/tmp/tapdisk-recover.img), randwrite 4k at depth 32
# (RECOVER_BENCH_ARGS overrides). Prints the bench's report; exits with the bench's status. Only
# the daemons this script started are killed, by their pid.
set -euo pipefail

kills=${1:-10}
interval=${2:-1.5}
repo=$(cd "$(dirname "$0")/.." && pwd)
tapdiskd=${TAPDISKD:-$repo/.build/release/tapdiskd}
[[ -x $tapdiskd ]] || tapdiskd=$repo/.build/debug/tapdiskd
image=${RECOVER_IMAGE:-/var/tmp/tapdisk-recover.img}
dir=$(mktemp -d /tmp/tapdisk-recover-XXXXXX)
seconds=$(python3 -c "print(int($kills * $interval + 3))")
read -r -a bench_args <<<"${RECOVER_BENCH_ARGS:---rw randwrite --bs 4k --iodepth 32}"

rm -f "$image"
"$tapdiskd" create "$image" --size 1G >/dev/null
# The supervisor: restart the daemon whenever it dies, until told to stop.
(
    while :; do
        "$tapdiskd" --image "$image" --socket "$dir/disk.sock" 2>>"$dir/daemon.log" &
        echo $! >"$dir/daemon.pid"
        wait $! || true
        [[ -e $dir/stop ]] && break
    done
) &
supervisor=$!
for _ in $(seq 200); do [[ -S $dir/disk.sock ]] && break; sleep 0.05; done  # paces the start-up wait

"$tapdiskd" bench --socket "$dir/disk.sock" --recover --seconds "$seconds" "${bench_args[@]}" &
bench=$!
for _ in $(seq "$kills"); do
    sleep "$interval"
    kill -9 "$(cat "$dir/daemon.pid")" || echo "recover.sh: no daemon to kill" >&2
done
status=0
wait $bench || status=$?
touch "$dir/stop"
kill "$(cat "$dir/daemon.pid")" 2>/dev/null || true
wait $supervisor 2>/dev/null || true
rm -rf "$dir" "$image"
exit $status
