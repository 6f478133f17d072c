#!/bin/bash
# vhost-kill-run.sh: kill -9 tapdiskd at random points while a real Linux guest writes, fsyncs
# and reads back through vhost-user-blk, and restart it each time; QEMU reconnects
# (-chardev ...,reconnect=1) and the new daemon takes over the requests in flight through the
# INFLIGHT_SHMFD region (docs/vhost-user.md).
#
#   scripts/vhost-kill-run.sh [KILLS [TAPDISKD]]     (root; QEMU and scripts/guest.sh's cache)
#
# In the guest, three writers each loop over their own 4 MiB of /dev/vda: 256 KiB of fresh
# random data written with O_DIRECT + fsync, read back with O_DIRECT, compared; a line per
# round (OK, or FAIL on any I/O error or mismatch). The host waits, after each restart, until
# QEMU has reconnected, then kills again after 0.2-1.7 s. After KILLS kills it writes STOP into
# sector 131000 of the image, which the writers poll. Exit status 0 only if the guest ended with
# rc=0, no round failed and every kill was followed by a reconnect.
set -u
KILLS=${1:-50}
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${2:-$REPO/.build/debug/tapdiskd}
D=$(mktemp -d /var/tmp/tapdisk-kill-run-XXXXXX)
trap '[ -f "$D/pid" ] && kill -9 "$(cat "$D/pid")" 2>/dev/null; rm -rf "$D"' EXIT

cat >"$D/guest.sh" <<'GUEST'
#!/bin/sh
dmesg -n 1
writer() {
    w=$1; i=0
    while :; do
        dd if=/dev/vda bs=512 skip=131000 count=1 iflag=direct 2>/dev/null | grep -q STOP && break
        off=$(( w * 64 + (i % 16) * 4 ))
        dd if=/dev/urandom of=/tmp/w$w bs=64k count=4 2>/dev/null
        dd if=/tmp/w$w of=/dev/vda bs=64k seek=$off oflag=direct conv=fsync,notrunc 2>/dev/null || echo "FAIL write w$w i$i"
        dd if=/dev/vda of=/tmp/r$w bs=64k skip=$off count=4 iflag=direct 2>/dev/null || echo "FAIL read w$w i$i"
        if cmp -s /tmp/w$w /tmp/r$w; then echo "OK w$w i$i"; else echo "FAIL cmp w$w i$i"; fi
        i=$((i+1))
    done
    echo "DONE w$w $i"
}
writer 0 & writer 1 & writer 2 &
wait
GUEST

truncate -s 64M "$D/img"
: >"$D/daemon.log"
start_daemon() {
    "$BIN" --image "$D/img" --socket "$D/c.sock" --vhost-user-blk "$D/v.sock" --log-level debug >>"$D/daemon.log" 2>&1 &
    echo $! >"$D/pid"
    disown  # no "Killed" notice from bash for each kill
    for _ in $(seq 500); do [ -S "$D/v.sock" ] && [ -S "$D/c.sock" ] && break; sleep 0.02; done
}
count() { grep -c "$1" "$2"; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }

start_daemon
(TAPDISK_GUEST_TIMEOUT=1800 TAPDISK_GUEST_CHARDEV=",reconnect=1" stdbuf -oL "$REPO/scripts/guest.sh" run \
    "$D/v.sock" "$D/guest.sh" >"$D/console" 2>&1; echo "guest.sh rc=$?" >>"$D/console") &
GUEST_PID=$!
for _ in $(seq 1200); do grep -q "OK w" "$D/console" && break; sleep 0.1; done

kills=0 missed=0
while [ "$kills" -lt "$KILLS" ]; do
    sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.2 + (r % 1500) / 1000 }')"
    pid=$(cat "$D/pid")
    t0=$(date +%s.%N)
    connections=$(count "front-end connected" "$D/daemon.log")
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
    start_daemon
    kills=$((kills + 1))
    for _ in $(seq 3000); do [ "$(count "front-end connected" "$D/daemon.log")" -gt "$connections" ] && break; sleep 0.01; done
    [ "$(count "front-end connected" "$D/daemon.log")" -gt "$connections" ] || missed=$((missed + 1))
    reconnect=$(since "$t0")
    rounds=$(count "OK w" "$D/console")
    for _ in $(seq 3000); do [ "$(count "OK w" "$D/console")" -gt "$rounds" ] && break; sleep 0.01; done
    echo "kill $kills: reconnected after $reconnect s, next verified round after $(since "$t0") s"
done
printf 'STOP' | dd of="$D/img" bs=512 seek=131000 conv=notrunc 2>/dev/null
wait "$GUEST_PID"
kill "$(cat "$D/pid")"

ok=$(count "OK w" "$D/console")
failed=$(count "FAIL" "$D/console")
resumed=$(count "inflight region" "$D/daemon.log")
resubmitted=$(grep -o 'resubmitted=[0-9]*' "$D/daemon.log" | cut -d= -f2 | awk '{ s += $1 } END { print s + 0 }')
violations=$(grep -ciE "violation|halted" "$D/daemon.log")
echo "kills: $kills (no reconnect after $missed), rounds verified: $ok, failed: $failed"
echo "daemon: $(count "front-end connected" "$D/daemon.log") connections, $resumed rings resumed with $resubmitted requests from the inflight region, $violations violations"
grep -E "FAIL|DONE|TAPDISK-GUEST-END|guest.sh rc" "$D/console" | head -20
grep -q "TAPDISK-GUEST-END rc=0" "$D/console" && [ "$failed" -eq 0 ] && [ "$missed" -eq 0 ] && [ "$violations" -eq 0 ]
