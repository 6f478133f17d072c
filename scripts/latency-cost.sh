#!/usr/bin/env bash
# What recording a request's latency costs (docs/performance.md, "Latency histograms"): the
# project's own LatencyHistograms.swift, DiskOperation.swift and MonotonicClock.swift compiled
# with `swiftc -O` beside a small driver, timing 20 million requests three times each:
#
#   record only                 the bucket lookup and three increments
#   clock read                  one MonotonicClock.nanoseconds() (clock_gettime through the vDSO)
#   reaped request              what `begin` and `finish` add to a request answered from a reap batch:
#                               one clock read (`finish` takes the batch's) and a record
#   other request               what they add to one answered outside a reap (DISCARD, refusals,
#                               held requests answered by resume/detach): two clock reads and a record
#
#   scripts/latency-cost.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/main.swift" <<'SWIFT'
let h = LatencyHistograms()
let n = 20_000_000
var values = [UInt64](repeating: 0, count: 4096)
var s: UInt64 = 0x9E37_79B9_7F4A_7C15
for i in 0..<values.count {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17
    values[i] = 1 << (10 + s % 20) | (s >> 40)  // about 1 µs ... 1 s
}
let ops: [DiskOperation] = [.read, .write, .flush, .discard]
func run(_ name: String, _ body: (Int) -> Void) {
    for _ in 0..<3 {
        let t0 = MonotonicClock.nanoseconds()
        for i in 0..<n { body(i) }
        let t1 = MonotonicClock.nanoseconds()
        print("\(name): \(Double(t1 - t0) / Double(n)) ns per request")
    }
}
values.withUnsafeBufferPointer { v in
    run("record only") { i in h.record(LatencyHistograms.Operation(ops[i & 3]), nanoseconds: v[i & 4095]) }
    run("clock read") { _ in s &+= MonotonicClock.nanoseconds() }
    var reapedAt = MonotonicClock.nanoseconds()
    run("reaped request") { i in
        let start = MonotonicClock.nanoseconds()
        reapedAt &+= 1000
        h.record(LatencyHistograms.Operation(ops[i & 3]), nanoseconds: max(reapedAt, start) - start)
    }
    run("other request") { i in
        let start = MonotonicClock.nanoseconds()
        let now = MonotonicClock.nanoseconds()
        h.record(LatencyHistograms.Operation(ops[i & 3]), nanoseconds: max(now, start) - start)
    }
}
// Keep the results alive.
if h.snapshot(.read).count == 0 || s == 1 { print("-") }
SWIFT
src="$repo/Sources/TapDisk"
swiftc -O -package-name tapdisk -module-name latencycost "$work/main.swift" "$src/Engine/LatencyHistograms.swift" \
    "$src/Engine/LatencySnapshot.swift" "$src/Engine/DiskOperation.swift" "$src/System/MonotonicClock.swift" \
    -o "$work/latency-cost"
"$work/latency-cost"
