#!/usr/bin/env bash
# The README's first Quick start command: installs what is missing, builds tapdiskd in release
# mode and runs `tapdiskd demo` (as root: it loop-mounts a 16 MiB ext4). Extra arguments go to
# the demo (e.g. --json, --keep).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/path.sh

if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/demo.sh needs root: it installs packages and loop-mounts a 16 MiB ext4 (run it with sudo)" >&2
    exit 1
fi

scripts/setup.sh
swift build -c release --product tapdiskd >/dev/null
exec .build/release/tapdiskd demo "$@"
