#!/usr/bin/env bash
# Builds one fuzz target with libFuzzer + AddressSanitizer and runs it (docs/fuzzing.md).
#
#   scripts/fuzz.sh TARGET [SECONDS] [libFuzzer flags...]
#   scripts/fuzz.sh list
#
# The build goes to .build/fuzz (its own scratch path: the sanitizer flags apply to every module,
# and sharing .build would throw away the normal debug build). The run starts from the committed
# seeds in Fuzz/Corpus/TARGET but grows a working corpus in .build/fuzz/corpus/TARGET, so the
# repository only changes when someone copies an input over on purpose; crashes land in
# .build/fuzz/artifacts/TARGET/. A plain `swift build` builds the same targets as replayers:
# .build/debug/TARGET Fuzz/Corpus/TARGET
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/path.sh

targets=(ControlRequestFuzzer VhostMessageFuzzer VirtqueueFuzzer BlkifValidatorFuzzer NBDProtocolFuzzer)
if [[ $# -lt 1 || $1 == list || $1 == -h || $1 == --help ]]; then
    echo "usage: scripts/fuzz.sh TARGET [SECONDS] [libFuzzer flags...]"
    echo "targets: ${targets[*]}"
    exit $(( $# < 1 ? 2 : 0 ))
fi
target=$1
seconds=${2:-60}
shift $(( $# < 2 ? $# : 2 ))
[[ " ${targets[*]} " == *" $target "* ]] || { echo "fuzz.sh: unknown target $target" >&2; exit 2; }

nice swift build --scratch-path .build/fuzz -c debug --product "$target" \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING 2>&1 |
    grep -v "Cannot export local symbol" || true
binary=.build/fuzz/debug/$target
[[ -x $binary ]] || { echo "fuzz.sh: build of $target failed" >&2; exit 1; }

corpus=.build/fuzz/corpus/$target
artifacts=.build/fuzz/artifacts/$target
mkdir -p "$corpus" "$artifacts"
# The Swift runtime's backtracer would catch the crash before libFuzzer does, and its memory
# reader trips ASan (stack-buffer-underflow in memserver_read); libFuzzer reports crashes itself.
export SWIFT_BACKTRACE=enable=no
# libFuzzer stops by itself after -max_total_time; the timeout is the backstop for a hang in the
# crash handler, so a run never outlives its budget by much.
exec timeout --kill-after=10 $(( seconds + 60 )) nice "$binary" -max_total_time="$seconds" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "$@" "$corpus" "Fuzz/Corpus/$target"
