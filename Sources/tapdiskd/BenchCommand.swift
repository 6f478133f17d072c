import ArgumentParser
import CLibAIO
import Glibc
import TapDisk

/// `tapdiskd bench`: a fio-like load generator that attaches to a running daemon as its frontend.
///
/// It keeps exactly `--iodepth` requests in flight for `--seconds`, refilling as responses are
/// reaped, and reports IOPS, MiB/s and submit→response latency. The measuring loop does not
/// allocate: request templates, per-slot timestamps, the free-slot stack and the latency
/// histogram are preallocated, and requests are written into ring slots straight from them.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Drive a running daemon as a frontend and measure IOPS and latency (like fio with its libaio engine).")

    enum Pattern: String, ExpressibleByArgument, CaseIterable {
        case randread, randwrite, read, write
        var isRead: Bool { self == .randread || self == .read }
        var isRandom: Bool { self == .randread || self == .randwrite }
    }

    @Option(help: "The daemon's control socket.")
    var socket: String

    @Option(help: "randread, randwrite, read or write.")
    var rw: Pattern = .randread

    @Option(help: "Request size: a multiple of 512 up to 1m; above 44k (11 segments) requests are INDIRECT.")
    var bs: String = "4k"

    @Option(help: "Requests kept in flight.")
    var iodepth: Int = 1

    @Option(help: "Measured seconds.")
    var seconds: Double = 10

    @Option(help: "Seconds of load before measuring (like fio --ramp_time).")
    var ramp: Double = 0

    @Option(
        name: .customLong("ring-page-order"),
        help: "Ring size 2^N pages (default: the smallest ring holding --iodepth).")
    var ringPageOrder: Int?

    @Option(help: "Random seed for offsets.")
    var seed: UInt64 = 0x5EED

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    func validate() throws {
        guard iodepth >= 1 else { throw ValidationError("--iodepth must be at least 1") }
        guard seconds > 0, ramp >= 0 else { throw ValidationError("--seconds must be positive, --ramp not negative") }
        let bytes: UInt64
        do { bytes = try ByteSize.parse(bs) } catch { throw ValidationError("--bs: \(error.message)") }
        guard bytes > 0, bytes % 512 == 0, bytes <= UInt64(Self.maxIndirectSegments * RingLayout.pageSize) else {
            throw ValidationError("--bs must be a positive multiple of 512 up to 1m")
        }
        if let ringPageOrder, !(0...RingLayout.maxPageOrder).contains(ringPageOrder) {
            throw ValidationError("--ring-page-order must be 0...\(RingLayout.maxPageOrder)")
        }
    }

    /// The daemon advertises 256 INDIRECT segments (1 MiB).
    static let maxIndirectSegments = 256

    func run() throws {
        let blockBytes = Int((try? ByteSize.parse(bs)) ?? 4096)
        let order =
            ringPageOrder ?? (0...RingLayout.maxPageOrder).first {
                RingLayout.entries(pageOrder: $0) >= UInt32(iodepth)
            } ?? RingLayout.maxPageOrder
        guard RingLayout.entries(pageOrder: order) >= UInt32(iodepth) else {
            throw ReportedFailure(
                message:
                    "tapdiskd bench: a ring of order \(order) holds \(RingLayout.entries(pageOrder: order)) requests < --iodepth \(iodepth)"
            )
        }
        let pagesPerRequest = (blockBytes + RingLayout.pageSize - 1) / RingLayout.pageSize
        let disk: RemoteDisk
        do {
            // INDIRECT requests need one more page per slot for their descriptors.
            let indirect = pagesPerRequest > RingLayout.maxSegments
            disk = try RemoteDisk(
                socketPath: socket, pageOrder: order, dataPages: iodepth * (pagesPerRequest + (indirect ? 1 : 0)))
        } catch {
            throw ReportedFailure(message: "tapdiskd bench: attach: \(error)")
        }
        let diskBytes = disk.sectors * 512
        guard diskBytes >= UInt64(blockBytes) else {
            throw ReportedFailure(message: "tapdiskd bench: the disk is smaller than --bs")
        }
        let runner = BenchRunner(
            disk: disk, pattern: rw, blockBytes: blockBytes, pagesPerRequest: pagesPerRequest, depth: iodepth,
            blocks: diskBytes / UInt64(blockBytes), seed: seed)
        let outcome = runner.run(rampNanos: UInt64(ramp * 1e9), measureNanos: UInt64(seconds * 1e9))
        runner.release()
        let detached = try? disk.detach()
        let report = runner.report(outcome: outcome, ringPageOrder: order)
        print(json ? report.json : report.text)
        if detached == nil { printError("tapdiskd bench: detach failed") }
        if !outcome.ok || report.errors > 0 { throw ExitCode(1) }
    }
}

/// Latency histogram with fixed, preallocated buckets: exact below 64 ns, then 64 linear
/// sub-buckets per power of two (relative error under 1.6%). Recording never allocates.
struct LatencyHistogram: ~Copyable {
    static let subBits = 6
    static let bucketCount = 64 * 64
    let counts: UnsafeMutablePointer<UInt64>
    var total: UInt64 = 0
    var sum: UInt64 = 0
    var minimum: UInt64 = .max
    var maximum: UInt64 = 0

    init() {
        counts = .allocate(capacity: Self.bucketCount)
        counts.initialize(repeating: 0, count: Self.bucketCount)
    }

    deinit { counts.deallocate() }

    @inline(__always)
    static func index(_ v: UInt64) -> Int {
        if v < 64 { return Int(v) }
        let e = 63 - v.leadingZeroBitCount
        let sub = Int((v >> UInt64(e - subBits)) & 63)
        return (e - subBits + 1) * 64 + sub
    }

    /// Middle of bucket `i`.
    static func value(_ i: Int) -> Double {
        if i < 64 { return Double(i) }
        let e = i / 64 + subBits - 1
        let sub = i % 64
        let low = Double(64 + sub) * Double(UInt64(1) << UInt64(e - subBits))
        return low + Double(UInt64(1) << UInt64(e - subBits)) / 2
    }

    @inline(__always)
    mutating func record(_ v: UInt64) {
        counts[Self.index(v)] &+= 1
        total &+= 1
        sum &+= v
        if v < minimum { minimum = v }
        if v > maximum { maximum = v }
    }

    mutating func reset() {
        counts.update(repeating: 0, count: Self.bucketCount)
        total = 0
        sum = 0
        minimum = .max
        maximum = 0
    }

    func percentile(_ p: Double) -> Double {
        guard total > 0 else { return 0 }
        let rank = UInt64((p / 100 * Double(total)).rounded(.up))
        var seen: UInt64 = 0
        for i in 0..<Self.bucketCount {
            seen += counts[i]
            if seen >= max(rank, 1) { return min(max(Self.value(i), Double(minimum)), Double(maximum)) }
        }
        return Double(maximum)
    }
}

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

    let disk: RemoteDisk
    let frontend: BlockFrontend
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
        disk: RemoteDisk, pattern: BenchCommand.Pattern, blockBytes: Int, pagesPerRequest: Int, depth: Int,
        blocks: UInt64, seed: UInt64
    ) {
        self.disk = disk
        frontend = disk.frontend
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
            frontend.enqueue(t.pointee)
        }
    }

    @inline(__always)
    private func complete(_ r: FrontendRing.Response, now: UInt64) {
        let slot = Int(truncatingIfNeeded: r.id)
        guard r.id < UInt64(depth), inFlight[slot] else {
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
        frontend.push()
        while freeCount < depth {
            var got = 0
            let next = frontend.reap { r in
                let now = MonotonicClock.nanoseconds()
                complete(r, now: now)
                lastCompletion = now
                got += 1
            }
            if next == .violation || badResponses > 0 {
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
                    frontend.push()
                }
                continue
            }
            guard disk.waitForResponses(timeoutMilliseconds: 10_000) else {
                outcome.ok = false
                outcome.failure = "the daemon hung up"
                break
            }
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
        let json = """
            {"rw":"\(pattern.rawValue)","bs":\(blockBytes),"iodepth":\(depth),"ring-page-order":\(ringPageOrder),\
            "seconds":\(fmt(secs, 3)),"completed":\(outcome.completed),"iops":\(fmt(iops, 1)),"mib-per-s":\(fmt(mibs, 2)),\
            "lat-us":{"mean":\(fmt(mean, 2)),"p50":\(fmt(p50, 2)),"p99":\(fmt(p99, 2)),"p99.9":\(fmt(p999, 2)),"max":\(fmt(maxUs, 2))},\
            "errors":\(errors),"first-error-status":\(firstErrorStatus),"ok":\(outcome.ok && errors == 0),"failure":"\(failure)"}
            """
        var text = """
            tapdiskd bench: \(pattern.rawValue) bs=\(blockBytes) iodepth=\(depth) ring-page-order=\(ringPageOrder)
              \(outcome.completed) requests in \(fmt(secs, 3)) s: \(fmt(iops, 0)) IOPS, \(fmt(mibs, 1)) MiB/s
              latency (us): mean \(fmt(mean, 1)), p50 \(fmt(p50, 1)), p99 \(fmt(p99, 1)), p99.9 \(fmt(p999, 1)), max \(fmt(maxUs, 1))
              errors: \(errors)
            """
        if errors > 0 { text += " (first status \(firstErrorStatus))" }
        if !outcome.ok { text += "\n  FAILED: \(failure)" }
        return Report(text: text, json: json, errors: errors)
    }
}

/// Fixed-point formatting without Foundation.
func fmt(_ x: Double, _ decimals: Int) -> String {
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
