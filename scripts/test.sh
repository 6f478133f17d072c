#!/usr/bin/env bash
# Sets up, builds and tests tapdiskd from the repository root; exits with the tests' status.
# Extra arguments are passed to `swift test` (e.g. --filter ImageCreator).
#
# Many tests need root (loop-mounted ext4 for ENOSPC); without root they are skipped, not failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/path.sh

scripts/setup.sh
swift build
# The unit verification test uses the freshly built daemon binary as ExecStart.
set +e
swift test "$@"
status=$?
set -e
exit "$status"
