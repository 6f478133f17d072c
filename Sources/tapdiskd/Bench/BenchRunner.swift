import CLibAIO
import Glibc
import TapDisk

/// The measuring loop; every per-request structure is preallocated in `init`.
final class BenchRunner {
    struct Outcome {
        var ok = true
        var failure = ""
        var completed: UInt64 = 0
        var nanos: UInt64 = 0
    }

    struct Report {
        var text: String
        var json: String
        var errors: UInt64
    }

    let disk: RecoveringDisk
    let pattern: BenchCommand.Pattern
    let blockBytes: Int
    let depth: Int
    let blocks: UInt64
    let sectorsPerBlock: UInt64
    /// One request template per slot, its segments already pointing at the slot's pages.
    let templates: UnsafeMutablePointer<clibaio_blkif_request>
    let submittedAt: UnsafeMutablePointer<UInt64>
    let inFlight: UnsafeMutablePointer<Bool>
    let freeSlots: UnsafeMutablePointer<Int>
    var freeCount: Int
    var histogram = LatencyHistogram()
    var rng: UInt64
    var nextSequentialBlock: UInt64 = 0
    var recording = false
    var completed: UInt64 = 0
    var errors: UInt64 = 0
    var badResponses: UInt64 = 0
    var firstErrorStatus: Int16 = 0

    init(
        disk: RecoveringDisk, pattern: BenchCommand.Pattern, blockBytes: Int, pagesPerRequest: Int, depth: Int,
        blocks: UInt64, seed: UInt64
    ) {
        self.disk = disk
        let frontend = disk.frontend
        self.pattern = pattern
        self.blockBytes = blockBytes
        self.depth = depth
        self.blocks = blocks
        sectorsPerBlock = UInt64(blockBytes / 512)
        rng = seed | 1
        templates = .allocate(capacity: depth)
        submittedAt = .allocate(capacity: depth)
        submittedAt.initialize(repeating: 0, count: depth)
        inFlight = .allocate(capacity: depth)
        inFlight.initialize(repeating: false, count: depth)
        freeSlots = .allocate(capacity: depth)
        for i in 0..<depth { freeSlots[i] = depth - 1 - i }
        freeCount = depth
        let op = pattern.isRead ? BlkifOperation.read.rawValue : BlkifOperation.write.rawValue
        for slot in 0..<depth {
            var r = clibaio_blkif_request()
            r.operation = op
            r.id = UInt64(slot)
            var remaining = blockBytes
            var n = 0
            withUnsafeMutableBytes(of: &r.seg) { raw in
                let segs = raw.bindMemory(to: clibaio_blkif_segment.self)
                while remaining > 0 {
                    let bytes = min(remaining, RingLayout.pageSize)
                    let gref = UInt32(slot * pagesPerRequest + n)
                    if n < RingLayout.maxSegments {
                        segs[n] = clibaio_blkif_segment(
                            gref: gref, first_sect: 0, last_sect: UInt8(bytes / 512 - 1), pad: 0)
                    }
                    // Writes carry a recognisable, non-zero pattern.
                    let page = frontend.page(gref).bindMemory(to: UInt64.self, capacity: 512)
                    for w in 0..<512 { page[w] = 0x7461_7064_6973_6B00 ^ (UInt64(gref) << 16) ^ UInt64(w) }
                    remaining -= bytes
                    n += 1
                }
            }
            if n > RingLayout.maxSegments {
                // Over 11 segments: an INDIRECT slot whose descriptors live in a page of its own.
                let descriptorPage = UInt32(depth * pagesPerRequest + slot)
                let segments = (0..<n).map { i in
                    BlkifSegment(
                        gref: UInt32(slot * pagesPerRequest + i), firstSector: 0,
                        lastSector: UInt8(min(blockBytes - i * RingLayout.pageSize, RingLayout.pageSize) / 512 - 1))
                }
                r = frontend.indirectRequest(
                    write: !pattern.isRead, id: UInt64(slot), sector: 0, segments: segments,
                    descriptorPage: descriptorPage)
            } else {
                r.nr_segments = UInt8(n)
            }
            (templates + slot).initialize(to: r)
        }
    }

    func release() {
        templates.deallocate()
        submittedAt.deallocate()
        inFlight.deallocate()
        freeSlots.deallocate()
    }

    @inline(__always)
    private func nextBlock() -> UInt64 {
        if pattern.isRandom {
            // xorshift64*, reduced without division bias worth caring about at 2^64 / blocks.
            rng ^= rng >> 12
            rng ^= rng << 25
            rng ^= rng >> 27
            return (rng &* 0x2545_F491_4F6C_DD1D) % blocks
        }
        let b = nextSequentialBlock
        nextSequentialBlock = b + 1 == blocks ? 0 : b + 1
        return b
    }

    /// Enqueues a request on every free slot (not yet published: the caller pushes).
    @inline(__always)
    private func refill(now: UInt64) {
        while freeCount > 0 {
            freeCount -= 1
            let slot = freeSlots[freeCount]
            let t = templates + slot
            t.pointee.sector_number = nextBlock() &* sectorsPerBlock
            inFlight[slot] = true
            submittedAt[slot] = now
            disk.enqueue(t.pointee)
        }
    }

    @inline(__always)
    private func complete(_ r: RecoveringDisk.Completion, now: UInt64) {
        let slot = Int(truncatingIfNeeded: r.tag)
        guard r.tag < UInt64(depth), inFlight[slot] else {
            badResponses &+= 1
            return
        }
        inFlight[slot] = false
        freeSlots[freeCount] = slot
        freeCount += 1
        if r.status != 0 {
            if errors == 0 { firstErrorStatus = r.status }
            errors &+= 1
        }
        if recording {
            completed &+= 1
            histogram.record(now &- submittedAt[slot])
        }
    }

    func run(rampNanos: UInt64, measureNanos: UInt64) -> Outcome {
        var outcome = Outcome()
        let begin = MonotonicClock.nanoseconds()
        var measureStart = begin &+ rampNanos
        recording = rampNanos == 0
        let end = measureStart &+ measureNanos
        var lastCompletion = begin
        var submitting = true
        refill(now: MonotonicClock.nanoseconds())
        disk.push()
        while freeCount < depth {
            var got = 0
            do {
                try disk.reap { r in
                    let now = MonotonicClock.nanoseconds()
                    complete(r, now: now)
                    lastCompletion = now
                    got += 1
                }
            } catch {
                outcome.ok = false
                outcome.failure = "\(error)"
                break
            }
            if badResponses > 0 {
                outcome.ok = false
                outcome.failure = "the daemon answered a request that was not outstanding"
                break
            }
            if got > 0 {
                let now = lastCompletion
                if !recording && now >= measureStart {
                    recording = true
                    measureStart = now
                    histogram.reset()
                    completed = 0
                }
                if now >= end { submitting = false }
                if submitting && freeCount > 0 {
                    refill(now: MonotonicClock.nanoseconds())
                    disk.push()
                }
                continue
            }
            let recoveriesBefore = disk.recoveries
            do {
                try disk.wait(timeoutMilliseconds: 10_000)
            } catch {
                outcome.ok = false
                outcome.failure = "\(error)"
                break
            }
            // A recovery's reconnect has a deadline of its own; the stall clock restarts after it.
            if disk.recoveries != recoveriesBefore { lastCompletion = MonotonicClock.nanoseconds() }
            if MonotonicClock.nanoseconds() &- lastCompletion > 30_000_000_000 {
                outcome.ok = false
                outcome.failure = "no response for 30 s with \(depth - freeCount) requests outstanding"
                break
            }
        }
        outcome.completed = completed
        outcome.nanos = lastCompletion &- measureStart
        return outcome
    }

    func report(outcome: Outcome, ringPageOrder: Int) -> Report {
        let secs = Double(outcome.nanos) / 1e9
        let iops = secs > 0 ? Double(outcome.completed) / secs : 0
        let mibs = iops * Double(blockBytes) / 1_048_576
        let mean = histogram.total > 0 ? Double(histogram.sum) / Double(histogram.total) / 1000 : 0
        let p50 = histogram.percentile(50) / 1000
        let p99 = histogram.percentile(99) / 1000
        let p999 = histogram.percentile(99.9) / 1000
        let maxUs = Double(histogram.maximum) / 1000
        let failure = outcome.ok ? "" : outcome.failure
        let stalls = disk.stalls.sorted()
        let stallMedianMs = stalls.isEmpty ? 0 : Double(stalls[stalls.count / 2]) / 1e6
        let stallMaxMs = Double(stalls.last ?? 0) / 1e6
        let recovery =
            disk.recovers
            ? ",\"recoveries\":\(disk.recoveries),\"resubmitted\":\(disk.resubmitted),\"dropped-responses\":\(disk.droppedResponses),\"stall-ms\":{\"median\":\(fixedPoint(stallMedianMs, 1)),\"max\":\(fixedPoint(stallMaxMs, 1))}"
            : ""
        let json = """
            {"rw":"\(pattern.rawValue)","bs":\(blockBytes),"iodepth":\(depth),"ring-page-order":\(ringPageOrder),\
            "seconds":\(fixedPoint(secs, 3)),"completed":\(outcome.completed),"iops":\(fixedPoint(iops, 1)),"mib-per-s":\(fixedPoint(mibs, 2)),\
            "lat-us":{"mean":\(fixedPoint(mean, 2)),"p50":\(fixedPoint(p50, 2)),"p99":\(fixedPoint(p99, 2)),"p99.9":\(fixedPoint(p999, 2)),"max":\(fixedPoint(maxUs, 2))},\
            "errors":\(errors),"first-error-status":\(firstErrorStatus),"ok":\(outcome.ok && errors == 0),"failure":"\(failure)"\(recovery)}
            """
        var text = """
            tapdiskd bench: \(pattern.rawValue) bs=\(blockBytes) iodepth=\(depth) ring-page-order=\(ringPageOrder)
              \(outcome.completed) requests in \(fixedPoint(secs, 3)) s: \(fixedPoint(iops, 0)) IOPS, \(fixedPoint(mibs, 1)) MiB/s
              latency (us): mean \(fixedPoint(mean, 1)), p50 \(fixedPoint(p50, 1)), p99 \(fixedPoint(p99, 1)), p99.9 \(fixedPoint(p999, 1)), max \(fixedPoint(maxUs, 1))
              errors: \(errors)
            """
        if errors > 0 { text += " (first status \(firstErrorStatus))" }
        if disk.recovers {
            text +=
                "\n  recoveries: \(disk.recoveries), resubmitted \(disk.resubmitted), dropped responses \(disk.droppedResponses), stall (ms): median \(fixedPoint(stallMedianMs, 1)), max \(fixedPoint(stallMaxMs, 1))"
        }
        if !outcome.ok { text += "\n  FAILED: \(failure)" }
        return Report(text: text, json: json, errors: errors)
    }
}

/// Fixed-point formatting without Foundation.
func fixedPoint(_ x: Double, _ decimals: Int) -> String {
    guard x.isFinite else { return "0" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let n = Int64((abs(x) * scale).rounded())
    let whole = n / Int64(scale)
    var s = (x < 0 && n != 0 ? "-" : "") + String(whole)
    if decimals > 0 {
        let frac = String(n % Int64(scale))
        s += "." + String(repeating: "0", count: decimals - frac.count) + frac
    }
    return s
}
