#!/usr/bin/env bash
# Sets up, builds and tests tapdiskd from the repository root; exits with the tests' status.
# Extra arguments are passed to `swift test` (e.g. --filter ImageCreator).
#
# Many tests need root (loop-mounted ext4 for ENOSPC); without root they are skipped, not failed.
# As root it also builds the guest that the QEMU suites boot (scripts/guest.sh build, cached in
# /var/cache/tapdisk-guest, about 6 s the first time); if that fails, it prints why and those
# suites skip themselves (they look for the cached kernel and initramfs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/path.sh

scripts/setup.sh
if [[ $(id -u) -eq 0 ]]; then
    guest_log=$(mktemp)
    if ! scripts/guest.sh build >"$guest_log" 2>&1; then
        echo "test.sh: could not build the guest (scripts/guest.sh build); the QEMU suites will be skipped:" >&2
        tail -n 5 "$guest_log" | sed 's/^/  /' >&2
    fi
    rm -f "$guest_log"
else
    echo "test.sh: not root; the QEMU suites (which need root) will be skipped" >&2
fi
swift build
# The unit verification test uses the freshly built daemon binary as ExecStart.
set +e
swift test "$@"
status=$?
set -e
exit "$status"
