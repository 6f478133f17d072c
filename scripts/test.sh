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
# the reason (Tests/TapDiskTests/Support/Sanitizer.swift lists them). Every report, from any
# process (the daemons the tests spawn, the demo, the test binary), goes to a file in
# .build-Xsan/sanitizer-reports (log_path), so one that lands in a daemon log nobody reads still
# counts: the run fails if any file is there, and their summaries are printed. Under address,
# LeakSanitizer checks every process at exit except the test binary itself (Sanitizer.swift says
# why). It prints the build and test times at the end; what each mode costs and what it found:
# docs/architecture.md, section "Tests".
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
    # ASan stops a process at its first error (a daemon that dies fails its test); TSan goes on,
    # so one run collects every race. The Swift backtracer would also handle an ASan abort, and
    # can hang.
    export SWIFT_BACKTRACE=enable=no
    reports=$PWD/$scratch/sanitizer-reports
    rm -rf "$reports"
    mkdir -p "$reports"
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:log_path=$reports/asan}
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=0:log_path=$reports/tsan}
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
if [[ -n $sanitize ]] && compgen -G "$reports/*" >/dev/null; then
    echo "test.sh: $(ls "$reports" | wc -l) sanitizer report(s) in $reports:" >&2
    grep -h -E "^(SUMMARY|WARNING: ThreadSanitizer|==[0-9]+==ERROR)" "$reports"/* | sort | uniq -c >&2
    status=1
fi
echo "test.sh: ${sanitize:-no} sanitizer: build ${build_seconds} s, tests ${test_seconds} s, status $status" >&2
exit "$status"
