#!/usr/bin/env bash
# tapdiskd against fio on the same image, in the same run.
#
#   scripts/bench.sh [SECONDS]        (default 10 s per case; run as root)
#
# For each case (randread/randwrite x 4 KiB x QD1/QD32) it runs
#   fio --ioengine=libaio --direct=1 ... on the image, then
#   tapdiskd bench against `tapdiskd --image IMG --cache none`
# and prints a Markdown table (fio IOPS, tapdiskd IOPS, ratio) on stdout. Progress goes to
# stderr. Environment: BENCH_IMAGE (default /var/tmp/tapdisk-bench.img, 1 GiB, written whole
# first so reads hit allocated blocks), BENCH_RAMP (seconds of ramp for both, default 1),
# BENCH_KEEP_IMAGE=1 keeps the image.
set -euo pipefail

seconds=${1:-10}
ramp=${BENCH_RAMP:-1}
image=${BENCH_IMAGE:-/var/tmp/tapdisk-bench.img}
repo=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH

log() { printf '%s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "bench.sh: run as root"; exit 1; }
"$repo/scripts/setup.sh"
command -v python3 >/dev/null || { log "bench.sh: python3 is needed to read fio's JSON"; exit 1; }

log "building (release)..."
(cd "$repo" && swift build -c release --product tapdiskd >&2)
tapdiskd="$repo/.build/release/tapdiskd"

work=$(mktemp -d /tmp/tapdisk-bench.XXXXXX)
socket="$work/tapdiskd.sock"
daemon_pid=
cleanup() {
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    [[ ${BENCH_KEEP_IMAGE:-0} == 1 ]] || rm -f "$image"
}
trap cleanup EXIT

size=$((1 << 30))
if [[ ! -f $image || $(stat -c %s "$image") -ne $size ]]; then
    log "writing a 1 GiB image at $image (every block allocated)..."
    rm -f "$image"
    dd if=/dev/urandom of="$image" bs=4M count=256 oflag=direct status=none
fi
sync

start_daemon() {
    "$tapdiskd" --image "$image" --socket "$socket" --cache none --log-level warning \
        >"$work/daemon.log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 200); do
        [[ -S $socket ]] && return 0
        kill -0 "$daemon_pid" 2>/dev/null || { log "tapdiskd exited:"; cat "$work/daemon.log" >&2; exit 1; }
        sleep 0.05
    done
    log "tapdiskd did not listen on $socket"
    exit 1
}

stop_daemon() {
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" || { log "tapdiskd exited with $?"; cat "$work/daemon.log" >&2; exit 1; }
    daemon_pid=
}

fio_iops() { # rw depth -> "iops p50us p99us"
    fio --name=x --filename="$image" --ioengine=libaio --direct=1 --rw="$1" --bs=4k --iodepth="$2" \
        --runtime="$seconds" --ramp_time="$ramp" --time_based --output-format=json >"$work/fio.json"
    python3 - "$work/fio.json" "$1" <<'EOF'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
side = job["read" if "read" in sys.argv[2] else "write"]
if job.get("error", 0) or side.get("total_ios", 0) == 0:
    sys.exit("fio failed: error %s" % job.get("error"))
pct = side["clat_ns"].get("percentile", {})
lat = side["lat_ns"]
print("%.0f %.1f %.1f %.1f" % (side["iops"], lat["mean"] / 1e3, pct.get("50.000000", 0) / 1e3, pct.get("99.000000", 0) / 1e3))
EOF
}

tapdiskd_iops() { # rw depth -> "iops mean p50us p99us"
    "$tapdiskd" bench --socket "$socket" --rw "$1" --bs 4k --iodepth "$2" --seconds "$seconds" --ramp "$ramp" --json \
        >"$work/bench.json"
    python3 - "$work/bench.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
if not r["ok"] or r["errors"]:
    sys.exit("tapdiskd bench failed: %s" % r)
lat = r["lat-us"]
print("%.0f %.1f %.1f %.1f" % (r["iops"], lat["mean"], lat["p50"], lat["p99"]))
EOF
}

cases=("randread 1" "randread 32" "randwrite 1" "randwrite 32")
rows=()
start_daemon
for c in "${cases[@]}"; do
    read -r rw depth <<<"$c"
    log "== $rw 4k QD$depth: fio"
    read -r f_iops f_mean f_p50 f_p99 < <(fio_iops "$rw" "$depth")
    log "   fio $f_iops IOPS; tapdiskd bench"
    read -r t_iops t_mean t_p50 t_p99 < <(tapdiskd_iops "$rw" "$depth")
    log "   tapdiskd $t_iops IOPS"
    ratio=$(python3 -c "print('%.2f' % ($t_iops / $f_iops))")
    rows+=("| $rw | 4k | $depth | $f_iops | $t_iops | **$ratio** | $f_mean / $f_p50 / $f_p99 | $t_mean / $t_p50 / $t_p99 |")
done
stop_daemon

kernel=$(uname -r)
cpus=$(nproc)
fs=$(findmnt -n -o FSTYPE --target "$(dirname "$image")")
cat <<EOF
## tapdiskd vs fio (libaio, O_DIRECT), same image, same run

Image: 1 GiB at \`$image\` ($fs, fully written), kernel $kernel, $cpus CPUs, ${seconds} s per case after ${ramp} s ramp.
fio: \`--ioengine=libaio --direct=1 --bs=4k\`. tapdiskd: \`--cache none\`, driven by \`tapdiskd bench\` over the shared ring (daemon and client are separate processes).
Latency is submit→completion in µs (fio: lat_ns mean, clat percentiles).

| rw | bs | QD | fio IOPS | tapdiskd IOPS | tapdiskd/fio | fio lat mean/p50/p99 | tapdiskd lat mean/p50/p99 |
|---|---|---|---|---|---|---|---|
EOF
printf '%s\n' "${rows[@]}"
