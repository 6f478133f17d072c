#!/usr/bin/env bash
# QoS accuracy (issue 17 §2): achieved rate against --limit, p50 below the limit against no
# limit, and a limit changed mid-run with set-limits. Prints Markdown tables on stdout.
#
#   scripts/qos-bench.sh [SECONDS [ROUNDS]]     (default 10 s per case, 3 latency rounds)
#
# Builds release, writes a 256 MiB image and reads it once so it is in the page cache, and
# serves it `--cache writeback`: the limit, not the disk, sets the pace. Environment:
# QOS_IMAGE (default /var/tmp/tapdisk-qos.img), QOS_PARTS (rate,latency,change), QOS_RAMP
# (seconds of load before measuring, default 1; 0 counts the initial burst of a full bucket),
# QOS_NO_BUILD=1 uses the release binary as it is.
set -euo pipefail

seconds=${1:-10}
rounds=${2:-3}
image=${QOS_IMAGE:-/var/tmp/tapdisk-qos.img}
repo=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH

log() { printf '%s\n' "$*" >&2; }

if [[ ${QOS_NO_BUILD:-0} != 1 ]]; then
    log "building (release)..."
    (cd "$repo" && swift build -c release --product tapdiskd >&2)
fi
tapdiskd="$repo/.build/release/tapdiskd"

rm -f "$image"
dd if=/dev/urandom of="$image" bs=4M count=64 status=none
cat "$image" >/dev/null
trap 'rm -f "$image"' EXIT

log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$repo/scripts/qos-bench.py" --tapdiskd "$tapdiskd" --image "$image" --seconds "$seconds" \
    --ramp "${QOS_RAMP:-1}" --rounds "$rounds" --parts "${QOS_PARTS:-rate,latency,change}"
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
