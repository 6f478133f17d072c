#!/usr/bin/env bash
# The idle cost of many disks on one host (issue 17 §3): N tapdiskd on N small sparse images,
# start-up time, anonymous RSS and wake-ups per idle daemon, and one tapdisk-exporter scrape
# over all N. Prints a Markdown table; docs/performance.md "Many disks on one host" has results.
#
#   scripts/many-disks.sh N [DIR]      (DIR: where images and sockets go; default a new temp dir)
#
# Environment: IMAGE_SIZE (16M), IDLE_SECONDS (10), SCRAPES (5). Root is not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/path.sh

n=${1:?usage: scripts/many-disks.sh N [DIR]}
if [[ -n ${2:-} ]]; then
    dir=$2
    mkdir -p "$dir"
    made_dir=
else
    dir=$(mktemp -d /tmp/many-disks.XXXXXX)
    made_dir=1
fi
cleanup() { if [[ -n $made_dir ]]; then rm -rf "$dir"; fi; }
trap cleanup EXIT

# Each daemon holds about a dozen descriptors, the exporter one per daemon while it scrapes.
need_fds=$((n + 64))
if (($(ulimit -n) < need_fds)); then ulimit -n "$need_fds"; fi
if [[ $(ulimit -u) != unlimited ]] && (($(ulimit -u) < n + 64)); then
    echo "ulimit -u $(ulimit -u) is too small for $n daemons" >&2
    exit 1
fi

# Each daemon's io_setup reserves its ring's entries (512 at the default --max-ring-page-order)
# of fs.aio-max-nr, whose default 65536 stops the 129th daemon with EAGAIN.
aio_free=$(($(cat /proc/sys/fs/aio-max-nr) - $(cat /proc/sys/fs/aio-nr)))
if ((aio_free < n * 512)); then
    echo "fs.aio-max-nr leaves room for $aio_free AIO events, $n daemons need $((n * 512)):" >&2
    echo "  sysctl -w fs.aio-max-nr=$((n * 512 + $(cat /proc/sys/fs/aio-nr) + 65536))" >&2
    exit 1
fi

# Each daemon watches its image with one inotify instance (Daemon+Wakeups.swift), and the
# kernel's default fs.inotify.max_user_instances is 128 per user: past it a daemon falls back to
# polling the image's size every 500 ms, which is what this script measures the absence of.
inotify_max=$(cat /proc/sys/fs/inotify/max_user_instances)
if ((inotify_max < n + 16)); then
    echo "fs.inotify.max_user_instances is $inotify_max, $n daemons need $n (plus the host's own):" >&2
    echo "  sysctl -w fs.inotify.max_user_instances=$((n + 128))" >&2
    exit 1
fi

if [[ ! -x .build/release/tapdiskd || ! -x .build/release/tapdisk-exporter ]]; then
    swift build -c release >&2
fi

# The Python helper stops every process it started by PID (SIGTERM, then SIGKILL after 10 s)
# and removes the images, also on SIGINT/SIGTERM.
BIN=.build/release python3 scripts/many-disks.py "$n" "$dir"
