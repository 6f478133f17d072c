#!/usr/bin/env bash
# tapdiskd against qemu-storage-daemon as vhost-user-blk backends of the same guest, on the same
# image, in the same run.
#
#   scripts/compare-qsd.sh [ROUNDS [MIB]]     (default 3 rounds, MIB 1024; as root)
#
# Builds tapdiskd (release), writes a 1 GiB image (every block allocated, so neither backend
# pays for allocation), then, round after round, boots the guest of scripts/guest.sh once
# against each backend, the order swapped every round:
#   tapdiskd --image IMG --socket CTL --vhost-user-blk SOCK           (--cache none: O_DIRECT, AIO)
#   qemu-storage-daemon --blockdev driver=file,node-name=f,filename=IMG,cache.direct=on,aio=native \
#       --export type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=SOCK,writable=on
# In the guest, one after the other, on the raw /dev/vda (QD1, O_DIRECT in the guest too):
#   dd if=/dev/zero of=/dev/vda bs=1M count=MIB oflag=direct         write-1m
#   dd if=/dev/vda of=/dev/null bs=1M count=MIB iflag=direct         read-1m
#   dd if=/dev/zero of=/dev/vda bs=4k count=N4K oflag=direct         write-4k  (N4K 16384: 64 MiB)
#   dd if=/dev/vda of=/dev/null bs=4k count=N4K iflag=direct         read-4k
# MB/s is 10^6 bytes per second: the bytes dd was asked to move over the guest's /proc/uptime
# around it (this busybox dd prints no rate). The guest runs under TCG (no KVM here), which
# dominates: these numbers compare the backends under one emulated CPU, not their ceilings.
# A Markdown table of medians (and every round) goes to stdout, progress to stderr.
# Environment: COMPARE_IMAGE (default /var/tmp/tapdisk-compare.img), COMPARE_KEEP_IMAGE=1 keeps
# it, COMPARE_4K_COUNT (N4K), COMPARE_BACKENDS (default "tapdiskd qsd").
set -euo pipefail

rounds=${1:-3}
mib=${2:-1024}
count4k=${COMPARE_4K_COUNT:-16384}
image=${COMPARE_IMAGE:-/var/tmp/tapdisk-compare.img}
backends=(${COMPARE_BACKENDS:-tapdiskd qsd})
repo=$(cd "$(dirname "$0")/.." && pwd)
source "$repo/scripts/path.sh"

log() { printf '%s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "compare-qsd.sh: run as root"; exit 1; }
"$repo/scripts/setup.sh"
command -v qemu-storage-daemon >/dev/null || { log "compare-qsd.sh: qemu-storage-daemon is missing (qemu-system-x86)"; exit 1; }
"$repo/scripts/guest.sh" build >/dev/null

tapdiskd="$repo/.build/release/tapdiskd"
if [[ " ${backends[*]} " == *" tapdiskd "* ]]; then
    log "building tapdiskd (release)..."
    (cd "$repo" && swift build -c release --product tapdiskd >&2)
fi

size=$((1 << 30))
((mib * 1048576 <= size)) || { log "compare-qsd.sh: MIB must be at most 1024"; exit 1; }
if [[ ! -f $image || $(stat -c %s "$image") -ne $size ]]; then
    log "writing a 1 GiB image at $image (every block allocated)..."
    rm -f "$image"
    dd if=/dev/urandom of="$image" bs=4M count=256 oflag=direct status=none
fi
sync

work=$(mktemp -d /tmp/tapdisk-compare-XXXXXX)
backend_pid=
cleanup() {
    [[ -n $backend_pid ]] && kill "$backend_pid" 2>/dev/null && wait "$backend_pid" 2>/dev/null
    rm -rf "$work"
    [[ ${COMPARE_KEEP_IMAGE:-0} == 1 ]] || rm -f "$image"
}
trap cleanup EXIT

cat >"$work/guest-script.sh" <<EOF
#!/bin/sh
# Each case prints "CMP case bytes start end". This busybox dd prints no byte count or rate, so
# the time comes from /proc/uptime (10 ms resolution; every case runs for a second or more).
run() {
    name=\$1
    bytes=\$2
    shift 2
    t0=\$(cut -d' ' -f1 /proc/uptime)
    dd "\$@" 2>/tmp/dd.out || { echo "CMP-FAIL \$name"; cat /tmp/dd.out; return 1; }
    t1=\$(cut -d' ' -f1 /proc/uptime)
    echo "CMP \$name \$bytes \$t0 \$t1"
}
run write-1m $((mib << 20)) if=/dev/zero of=/dev/vda bs=1M count=$mib oflag=direct || exit 1
run read-1m $((mib << 20)) if=/dev/vda of=/dev/null bs=1M count=$mib iflag=direct || exit 1
run write-4k $((count4k * 4096)) if=/dev/zero of=/dev/vda bs=4k count=$count4k oflag=direct || exit 1
run read-4k $((count4k * 4096)) if=/dev/vda of=/dev/null bs=4k count=$count4k iflag=direct || exit 1
EOF
chmod +x "$work/guest-script.sh"

wait_for_socket() {  # wait_for_socket PATH: the backend listens, or the script fails
    local i
    for i in $(seq 100); do
        [[ -S $1 ]] && return 0
        kill -0 "$backend_pid" 2>/dev/null || { log "compare-qsd.sh: the backend exited at startup"; return 1; }
        sleep 0.1
    done
    log "compare-qsd.sh: no socket at $1"
    return 1
}

start_backend() {  # start_backend NAME SOCK
    case $1 in
    tapdiskd)
        "$tapdiskd" --image "$image" --socket "$work/ctl.sock" --vhost-user-blk "$2" --log-level warning \
            2>>"$work/backend.log" &
        ;;
    qsd)
        qemu-storage-daemon \
            --blockdev "driver=file,node-name=f,filename=$image,cache.direct=on,aio=native" \
            --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$2,writable=on" \
            >>"$work/backend.log" 2>&1 &
        ;;
    esac
    backend_pid=$!
    wait_for_socket "$2"
}

stop_backend() {
    kill "$backend_pid" 2>/dev/null || true
    wait "$backend_pid" 2>/dev/null || true
    backend_pid=
}

results="$work/results"  # lines: backend round case MB/s
: >"$results"
for round in $(seq "$rounds"); do
    order=("${backends[@]}")
    if ((round % 2 == 0)); then order=($(printf '%s\n' "${backends[@]}" | tac)); fi
    for backend in "${order[@]}"; do
        sock="$work/$backend.sock"
        rm -f "$sock"
        start_backend "$backend" "$sock"
        log "round $round: $backend"
        if ! "$repo/scripts/guest.sh" run "$sock" "$work/guest-script.sh" >"$work/console.log" 2>&1; then
            log "compare-qsd.sh: the guest failed against $backend:"
            tail -20 "$work/console.log" >&2
            exit 1
        fi
        stop_backend
        awk -v b="$backend" -v r="$round" '$1 == "CMP" { printf "%s %s %s %.1f\n", b, r, $2, $3 / ($5 - $4) / 1e6 }' \
            "$work/console.log" | tee -a "$results" >&2
    done
done

# Medians and every round, one row per case.
python3 - "$results" "${backends[*]}" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
backends = sys.argv[2].split()
cases = ["write-1m", "read-1m", "write-4k", "read-4k"]
values = {(b, c): [float(v) for bb, r, cc, v in rows if bb == b and cc == c] for b in backends for c in cases}
head = "| case | " + " | ".join(f"{b} MB/s median (rounds)" for b in backends)
if backends == ["tapdiskd", "qsd"]:
    head += " | tapdiskd / qsd"
print(head + " |")
print("|---" * (head.count("|")) + "|")
for c in cases:
    cells = []
    for b in backends:
        v = values[(b, c)]
        cells.append(f"{statistics.median(v):.1f} ({', '.join(f'{x:.1f}' for x in v)})" if v else "-")
    if backends == ["tapdiskd", "qsd"] and values[("tapdiskd", c)] and values[("qsd", c)]:
        cells.append(f"{statistics.median(values[('tapdiskd', c)]) / statistics.median(values[('qsd', c)]):.2f}")
    print(f"| {c} | " + " | ".join(cells) + " |")
EOF
