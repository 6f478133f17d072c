#!/usr/bin/env bash
# Sets up, builds and tests tapdiskd from the repository root; exits with the tests' status.
# Extra arguments are passed to `swift test` (e.g. --filter ImageCreator).
#
#   scripts/test.sh [--sanitize address|thread] [SWIFT TEST ARGUMENTS...]
#
# --sanitize KIND builds the package (the daemon binary the tests spawn included) and the tests
# with `--sanitize KIND` in a build folder of its own (.build-asan or .build-tsan, so the normal
# .build stays valid), compiles the tests with -DTAPDISK_SANITIZER, exports TAPDISK_SANITIZER=KIND
# and runs the whole suite. Tests that cannot mean anything under a sanitizer skip themselves with
# the reason (Tests/TapDiskTests/Support/Sanitizer.swift lists them). Under address, LeakSanitizer
# runs too (ASAN_OPTIONS below); any report from the daemon fails the test that started it, because
# the daemon then exits non-zero. It prints the build and test times at the end. What each mode
# costs and what it found: docs/architecture.md, "Testing".
#
# Many tests need root (loop-mounted ext4 for ENOSPC); without root they are skipped, not failed.
# As root it also builds the guest that the QEMU suites boot (scripts/guest.sh build, cached in
# /var/cache/tapdisk-guest, about 6 s the first time); if that fails, it prints why and those
# suites skip themselves (they look for the cached kernel and initramfs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/path.sh

sanitize=""
test_args=()
while (($#)); do
    case $1 in
    --sanitize)
        [[ $# -ge 2 ]] || { echo "test.sh: --sanitize needs address or thread" >&2; exit 2; }
        sanitize=$2
        shift 2
        ;;
    --sanitize=*)
        sanitize=${1#--sanitize=}
        shift
        ;;
    *)
        test_args+=("$1")
        shift
        ;;
    esac
done

build_args=()
case $sanitize in
"") ;;
address | thread)
    scratch=.build-${sanitize:0:1}san
    build_args=(--sanitize "$sanitize" --scratch-path "$scratch" -Xswiftc -DTAPDISK_SANITIZER)
    export TAPDISK_SANITIZER=$sanitize
    # A sanitizer report must stop the process that made it (a daemon that exits non-zero fails
    # its test). The Swift backtracer would otherwise also handle the crash and can hang.
    export SWIFT_BACKTRACE=enable=no
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1}
    ;;
*)
    echo "test.sh: --sanitize takes address or thread, not '$sanitize'" >&2
    exit 2
    ;;
esac

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
# The unit verification test uses the freshly built daemon binary as ExecStart, and the daemon
# tests spawn the binary next to the test bundle: both come from this one build.
build_start=$SECONDS
swift build --build-tests "${build_args[@]}"
build_seconds=$((SECONDS - build_start))
set +e
test_start=$SECONDS
swift test --skip-build "${build_args[@]}" "${test_args[@]}"
status=$?
test_seconds=$((SECONDS - test_start))
set -e
echo "test.sh: ${sanitize:-no} sanitizer: build ${build_seconds} s, tests ${test_seconds} s, status $status" >&2
exit "$status"
