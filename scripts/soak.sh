#!/usr/bin/env bash
# Runs the randomized real-daemon tests over and over for SECONDS, each iteration with a new seed,
# and stops at the first failure (exit status 1) with the seed that replays it.
#
#   scripts/soak.sh SECONDS [--seed S]
#
# SECONDS is wall time: iterations start until it has passed (at least one always runs). Iteration
# i runs seed S+i (S is random unless given, and printed first). One iteration is one `swift test`
# of the two soak tests (Tests/TapDiskTests/Support/Soak.swift), which run in parallel:
#   - DaemonPropertyTests.soakIteration: a blkif frontend, 2,500 random pipelined requests under
#     random AIO faults (TAPDISK_FAULTS=random:SEED), checked against a shadow model;
#   - VhostUserDaemonPropertyTests.soakIteration: the same for 2,500 virtqueue chains.
# The seed picks the failure policy, the polling, and for vhost-user the queue size, round limit and
# starting ring index. `scripts/soak.sh 1 --seed X` replays iteration X: the first batch a stream
# sends depends only on the seed (its digest is printed); later batches depend on when answers come.
# Debug build (the fault seam exists only there), as root for the vhost-user socket checks.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/path.sh

usage() { echo "usage: scripts/soak.sh SECONDS [--seed S]" >&2; exit 2; }
[[ $# -ge 1 && $1 =~ ^[0-9]+$ ]] || usage
seconds=$1
shift
seed=""
while (($#)); do
    case $1 in
    --seed)
        [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || usage
        seed=$2
        shift 2
        ;;
    *) usage ;;
    esac
done
[[ -n $seed ]] || seed=$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')
echo "soak: ${seconds} s from seed $seed (replay: scripts/soak.sh $seconds --seed $seed)"

swift build --build-tests >/dev/null
log=$(mktemp /tmp/soak-XXXXXX.log)
start=$SECONDS
iterations=0
while :; do
    current=$((seed + iterations))
    if ! TAPDISK_SOAK_SEED=$current swift test --skip-build --filter 'PropertyTests/soakIteration' >"$log" 2>&1; then
        echo "soak: iteration $iterations, seed $current FAILED after $((SECONDS - start)) s; log: $log" >&2
        grep -E "✘|error|recorded an issue" "$log" | head -n 40 >&2 || true
        echo "soak: replay with: scripts/soak.sh 1 --seed $current" >&2
        exit 1
    fi
    if ! grep -q "soakIteration() passed" "$log" || [[ $(grep -c "soakIteration() passed" "$log") -ne 2 ]]; then
        echo "soak: iteration $iterations, seed $current: the two soak tests did not both run; log: $log" >&2
        exit 1
    fi
    iterations=$((iterations + 1))
    echo "soak: iteration $iterations seed $current passed ($((SECONDS - start)) s): $(grep -oE 'first batch .*' "$log" | head -n 1)"
    ((SECONDS - start < seconds)) || break
done
rm -f "$log"
echo "soak: $iterations iterations ($((iterations * 2)) daemon runs, $((iterations * 5000)) requests) in $((SECONDS - start)) s, seeds $seed..$((seed + iterations - 1)), all passed"
