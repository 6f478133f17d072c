#!/bin/bash
# restart-stall.sh: the I/O stall a real Linux guest sees when the vhost-user-blk daemon behind
# its disk is restarted (an upgrade) or killed, with the listening sockets held across the
# restart the way systemd's tapdiskd-vhost@.socket holds them (docs/operations.md).
#
#   scripts/restart-stall.sh restart|kill [COUNT [TAPDISKD]]     (root; QEMU, cc, python3)
#
#   restart   SIGTERM: the daemon drains and exits, the supervisor starts a new one on the same
#             sockets (systemctl restart); COUNT times
#   kill      SIGKILL the daemon; the supervisor reaps it (SIGCHLD) and starts a new one at once
#             (Restart=on-failure); COUNT times
#
# scripts/socket-supervisor.py owns the control and vhost-user sockets and passes them to each
# daemon with LISTEN_FDS. QEMU (7.2, TCG, scripts/guest.sh) has -chardev ...,reconnect=1. In the
# guest, scripts/stall-writer.c writes 4 KiB blocks with O_DIRECT, each followed by fdatasync and
# a compared O_DIRECT read-back, and prints every gap of more than $TAPDISK_STALL_GAP_MS (50)
# between two successive completions, measured with the guest's CLOCK_MONOTONIC (under TCG the
# guest's clock is the host's). The stall of restart i is the longest gap printed between
# restart i and restart i+1. The host also records when the new daemon logged the front-end's
# reconnection. Restarts are 1.0-2.5 s apart once the previous one has reconnected.
#
# The image is on $TAPDISK_STALL_IMAGE_DIR (/dev/shm) served with --cache $TAPDISK_STALL_CACHE
# (writeback), so a flush costs microseconds and the gaps are the restarts, not the disk.
# NBD (for when tapdiskd serves it, issue 16): TAPDISK_STALL_TRANSPORT=nbd gives the supervisor
# a stream listener named "nbd" at $D/n.sock instead of the vhost-user one and the guest a
# virtio-blk disk on QEMU's NBD client (reconnect-delay=5); TAPDISK_STALL_DAEMON_ARGS adds the
# daemon's flags and TAPDISK_STALL_CONNECTED is the daemon's log line for a new connection.
# TAPDISK_STALL_SERVER replaces the whole daemon command (IMG and D are the image and work
# directory) and TAPDISK_STALL_NO_CONTROL=1 passes no control socket, e.g. to try another server;
# TAPDISK_STALL_CONNECTED=none for a server that logs no connections (then only the guest's gaps
# and its final checks say whether it came back).
#
# Exit status 0 only if every restart was followed by a reconnect, the guest ended with rc=0,
# no I/O failed or read back wrong in the guest, the image's blocks are all intact, and the
# daemons logged no frontend violation. p50/p99 are nearest-rank over COUNT restarts.
set -u
MODE=${1:-}
case "$MODE" in restart | kill) ;; *) echo "usage: $0 restart|kill [COUNT [TAPDISKD]]" >&2; exit 2 ;; esac
COUNT=${2:-20}
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${3:-$REPO/.build/debug/tapdiskd}
GAP_MS=${TAPDISK_STALL_GAP_MS:-50}
CACHE=${TAPDISK_STALL_CACHE:-writeback}
TRANSPORT=${TAPDISK_STALL_TRANSPORT:-vhost-user}
CONNECTED=${TAPDISK_STALL_CONNECTED:-front-end connected}
D=$(mktemp -d /var/tmp/tapdisk-stall-XXXXXX)
IMG=$(mktemp "${TAPDISK_STALL_IMAGE_DIR:-/dev/shm}/tapdisk-stall-XXXXXX.img")
SUP=""
GUEST=""
cleanup() {
    # The guest stops when STOP is in the image; QEMU is killed by guest.sh's timeout otherwise.
    if [ -n "$GUEST" ] && kill -0 "$GUEST" 2>/dev/null; then
        printf 'STOP' | dd of="$IMG" bs=512 seek=131000 conv=notrunc 2>/dev/null
        for _ in $(seq 600); do kill -0 "$GUEST" 2>/dev/null || break; sleep 0.1; done
    fi
    if [ -n "$SUP" ] && kill -0 "$SUP" 2>/dev/null; then
        echo stop >"$D/cmd"
        for _ in $(seq 300); do kill -0 "$SUP" 2>/dev/null || break; sleep 0.1; done
        kill "$SUP" 2>/dev/null
    fi
    rm -f "$IMG"
    if [ -n "${TAPDISK_STALL_KEEP:-}" ]; then echo "kept $D"; else rm -rf "$D"; fi
}
trap cleanup EXIT
count() { grep -c "$1" "$2"; }
now() { date +%s.%N; }

cc -static -O2 -o "$D/stall-writer" "$REPO/scripts/stall-writer.c" || exit 1
cat >"$D/guest.sh" <<GUEST
#!/bin/sh
dmesg -n 1
/stall-writer /dev/vda $GAP_MS 131000
GUEST
truncate -s 64M "$IMG"
mkfifo "$D/cmd"
: >"$D/daemon.log"
if [ "$TRANSPORT" = nbd ]; then
    listener=(--listen "nbd:stream:$D/n.sock")
    export TAPDISK_GUEST_DISK="-blockdev driver=nbd,node-name=d,server.type=unix,server.path=$D/n.sock,reconnect-delay=5 -device virtio-blk-pci,drive=d"
else
    listener=(--vhost-user "$D/v.sock")
fi
# shellcheck disable=SC2086 # TAPDISK_STALL_DAEMON_ARGS is a list of flags
[ -n "${TAPDISK_STALL_NO_CONTROL:-}" ] || listener+=(--control "$D/c.sock")
server=("$BIN" --image "$IMG" --cache "$CACHE" --log-level debug ${TAPDISK_STALL_DAEMON_ARGS:-})
if [ -n "${TAPDISK_STALL_SERVER:-}" ]; then eval "server=($TAPDISK_STALL_SERVER)"; fi
python3 "$REPO/scripts/socket-supervisor.py" "${listener[@]}" \
    --commands "$D/cmd" --events "$D/events" --log "$D/daemon.log" -- "${server[@]}" &
SUP=$!
for _ in $(seq 500); do [ -S "$D/v.sock" ] || [ -S "$D/n.sock" ] && break; sleep 0.02; done
if [ -z "${TAPDISK_STALL_SERVER:-}" ]; then
    for _ in $(seq 500); do grep -q serving "$D/daemon.log" && break; sleep 0.02; done
    grep -q serving "$D/daemon.log" || { cat "$D/daemon.log"; exit 1; }
fi

(TAPDISK_GUEST_TIMEOUT=1800 TAPDISK_GUEST_CHARDEV=",reconnect=1" TAPDISK_GUEST_FILES="$D/stall-writer" \
    stdbuf -oL "$REPO/scripts/guest.sh" run "$D/v.sock" "$D/guest.sh" >"$D/console" 2>&1
    echo "guest.sh rc=$?" >>"$D/console") &
GUEST=$!
for _ in $(seq 3000); do grep -q "^START" "$D/console" && break; sleep 0.1; done
grep -q "^START" "$D/console" || { echo "the guest did not start writing"; tail "$D/console"; exit 1; }

# window_max FROM TO: the longest GAP (ms) on console lines FROM+1..TO, or "-" if none.
window_max() {
    sed -n "$(($1 + 1)),$2p" "$D/console" | sed -n 's/^GAP ms=\([0-9.]*\).*/\1/p' | sort -g | tail -1 | grep . || echo "-"
}
missed=0
starts=()
reconnects=()
for i in $(seq "$COUNT"); do
    sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 1.0 + (r % 1500) / 1000 }')"
    starts+=("$(wc -l <"$D/console")")
    connections=$(count "$CONNECTED" "$D/daemon.log")
    t0=$(now)
    echo "$MODE" >"$D/cmd"
    if [ "$CONNECTED" = none ]; then  # a server that logs no connections: judge by the guest only
        sleep 1
        reconnects+=("-")
        continue
    fi
    for _ in $(seq 3000); do [ "$(count "$CONNECTED" "$D/daemon.log")" -gt "$connections" ] && break; sleep 0.005; done
    if [ "$(count "$CONNECTED" "$D/daemon.log")" -gt "$connections" ]; then
        reconnects+=("$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')")
    else
        reconnects+=("-")
        missed=$((missed + 1))
    fi
done
sleep 2
starts+=("$(wc -l <"$D/console")")
printf 'STOP' | dd of="$IMG" bs=512 seek=131000 conv=notrunc 2>/dev/null
wait "$GUEST"
GUEST=""

stalls=()
for i in $(seq "$COUNT"); do
    s=$(window_max "${starts[$((i - 1))]}" "${starts[$i]}")
    stalls+=("$s")
    echo "$MODE $i: guest stall ${s} ms; new daemon saw the front-end ${reconnects[$((i - 1))]} ms after the $MODE"
done
# nearest-rank percentiles; a window without a gap over GAP_MS counts as GAP_MS
percentiles() { tr ' ' '\n' | sed "s/^-\$/$GAP_MS/" | sort -g | awk '{ v[NR] = $1 } END {
    p50 = int(NR * 0.5); if (p50 < NR * 0.5) p50++; p99 = int(NR * 0.99); if (p99 < NR * 0.99) p99++
    printf "p50 %s ms, p99 %s ms, min %s ms, max %s ms (n=%d)", v[p50], v[p99], v[1], v[NR], NR }'; }
echo "guest-visible stall per $MODE: $(echo "${stalls[*]}" | percentiles)"
echo "front-end reconnected (host: daemon log polled every 5 ms, an upper bound): $(echo "${reconnects[*]}" | percentiles)"
if [ "$MODE" = restart ]; then
    awk '$2 == "sigterm" { t = $1 } $2 == "exited" && t { d = d " " int(($1 - t) * 1000 + 0.5); t = 0 }
        END { print "supervisor: SIGTERM to exit (the drain), ms:" d }' "$D/events"
else
    awk '$2 == "sigkill" { k = $1 } $2 == "died" && k { r = $1 }
        $2 == "started" && r { d = d sprintf(" %.0f+%.1f", (r - k) * 1000, ($1 - r) * 1000); k = r = 0 }
        END { print "supervisor: SIGKILL to reaped + reaped to new daemon forked, ms:" d }' "$D/events"
fi

# Cross-check: map the guest's clock onto the supervisor's (the offset under which the most
# SIGTERMs/SIGKILLs fall at the start of a guest gap, within 50 ms); then every restart must
# have its gap, and the gaps that span no restart are the host's own noise (a loaded machine).
python3 - "$D/events" "$D/console" "$COUNT" <<'PY'
import re, sys
acts = [float(l.split()[0]) for l in open(sys.argv[1]) if l.split()[1] in ("sigterm", "sigkill")][: int(sys.argv[3])]
text = open(sys.argv[2]).read()
gaps = [(float(at), float(ms) / 1000) for ms, at in re.findall(r"^GAP ms=([0-9.]+) at=([0-9.]+)", text, re.M)]

def spanned(off):
    found = {}
    for a in acts:
        c = [(t, g) for t, g in gaps if t - g <= a + off + 0.05 and t >= a + off]
        if c:
            found[a] = max(c, key=lambda x: x[1])
    return found

best = max(({} if not gaps else spanned((t - g) - a) for t, g in gaps for a in acts), key=len, default={})
others = sorted(g for t, g in set(gaps) - set(best.values()))
spans = sorted(g * 1000 for t, g in best.values())
print(f"cross-check: {len(best)} of {len(acts)} restarts fall at the start of a guest gap; "
      f"gaps that span none: {len(others)}, longest {others[-1] * 1000 if others else 0:.1f} ms")
if spans:
    print(f"cross-check: the spanning gaps: median {spans[(len(spans) - 1) // 2]:.1f} ms, max {spans[-1]:.1f} ms "
          f"(a restart without one stalled the guest less than the gap threshold)")
PY

# The image, from the host: every block the guest wrote holds its own slot and a pattern that
# matches its sequence number (scripts/stall-writer.c's fill()).
python3 - "$IMG" <<'PY' >"$D/image-check"
import struct, sys
M = (1 << 64) - 1
data = open(sys.argv[1], "rb").read()
good = bad = 0
for slot in range(256):
    b = data[(1 << 20) + slot * 4096:(1 << 20) + (slot + 1) * 4096]
    if b == bytes(4096):
        continue
    magic, s, seq = struct.unpack_from("<QQQ", b)
    x = ((slot << 40) ^ seq ^ 0x9e3779b97f4a7c15) & M
    words = []
    for _ in range(3, 512):
        x ^= (x << 13) & M; x ^= x >> 7; x ^= (x << 17) & M
        words.append(x)
    ok = magic == 0x5444535754414c4c and s == slot and b[24:] == struct.pack("<509Q", *words)
    good, bad = good + ok, bad + (not ok)
print(f"image blocks intact={good} corrupt={bad}")
PY
echo stop >"$D/cmd"
wait "$SUP"
SUP=""

failed=$(count "^FAIL" "$D/console")
violations=$(grep -ciE "violation|halted" "$D/daemon.log")
resumed=$(count "inflight region" "$D/daemon.log")
echo "restarts: $COUNT (no reconnect after $missed); guest: $(grep '^SUMMARY' "$D/console"), FAIL lines: $failed"
echo "$(cat "$D/image-check"); daemons: $(count "$CONNECTED" "$D/daemon.log") connections, $resumed rings resumed from the inflight region, $violations violations"
grep -E "^FAIL|TAPDISK-GUEST-END|guest.sh rc" "$D/console" | head -20
grep -q "TAPDISK-GUEST-END rc=0" "$D/console" && [ "$failed" -eq 0 ] && [ "$missed" -eq 0 ] && [ "$violations" -eq 0 ] &&
    grep -q "corrupt=0" "$D/image-check" && grep -q "errors=0 mismatches=0" "$D/console"
