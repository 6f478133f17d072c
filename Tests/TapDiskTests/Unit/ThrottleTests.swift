import Testing

@testable import TapDisk

/// The bucket arithmetic (`Throttle`, `LeakyBucket`) with an injected clock, against QEMU's
/// semantics: a bucket of a tenth of a second at the average without a burst limit, the debt a
/// consumed request may run up, bursts at `*-max` for `*-max-length` seconds, and the long-run
/// rate a greedy consumer gets. And `ThrottleLimits`' text and QEMU's validity rules.
@Suite struct ThrottleTests {
    static let second: UInt64 = 1_000_000_000

    static func throttle(_ text: String, at now: UInt64 = 0) throws -> Throttle {
        var t = Throttle()
        t.configure(try ThrottleLimits.parse(text), now: now)
        return t
    }

    /// A consumer that takes every request the buckets allow, waiting exactly as the engine
    /// does (until the time `wait` names), from `start` to `end`. Returns the consumption times.
    static func greedy(
        _ t: inout Throttle, from start: UInt64, to end: UInt64, write: Bool = false, bytes: Int = 4096
    ) -> [UInt64] {
        var now = start
        var times: [UInt64] = []
        while now < end {
            let wait = t.wait(now: now)
            if wait == 0 {
                t.charge(write: write, bytes: bytes, now: now)
                times.append(now)
            } else {
                now += wait
            }
        }
        return times
    }

    /// Equal but for the rounding of a float to whole nanoseconds.
    static func near(_ a: UInt64, _ b: UInt64) -> Bool { a > b ? a - b <= 2 : b - a <= 2 }

    @Test func noLimitNeverWaits() {
        var t = Throttle()
        #expect(!t.isEnabled)
        for i in 0..<1000 { t.charge(write: i % 2 == 0, bytes: 1 << 20, now: UInt64(i)) }
        #expect(t.wait(now: 1000) == 0)
    }

    @Test func aTenthOfASecondPassesThenEachRequestWaitsItsShare() throws {
        var t = try Self.throttle("iops-total=100")
        // The bucket holds 10 requests; the 11th may still go (the level is not above the size
        // before it is charged) and runs the bucket 1 request into debt.
        for _ in 0..<11 {
            #expect(t.wait(now: 0) == 0)
            t.charge(write: false, bytes: 4096, now: 0)
        }
        #expect(Self.near(t.wait(now: 0), 10_000_000), "1 request of debt at 100/s is 10 ms")
        #expect(Self.near(t.wait(now: 4_000_000), 6_000_000))
        #expect(t.wait(now: 10_000_000) == 0)
        t.charge(write: true, bytes: 4096, now: 10_000_000)
        #expect(Self.near(t.wait(now: 10_000_000), 10_000_000), "writes count in iops-total too")
    }

    @Test(arguments: [UInt64(200), 2000, 7])
    func greedyConsumerGetsTheAverageInTheLongRun(iops: UInt64) throws {
        var t = try Self.throttle("iops-total=\(iops)")
        let times = Self.greedy(&t, from: 0, to: 10 * Self.second)
        // 10 s at the rate, plus the initial bucket (a tenth of a second), plus the one request
        // that may run it into debt.
        let expected = Double(iops) * 10 + Double(iops) / 10
        #expect(abs(Double(times.count) - expected) <= 1.5, "\(times.count) requests, expected about \(expected)")
        // After the initial bucket, requests are spaced by 1/iops.
        let steady = times.dropFirst(Int(iops / 10) + 2)
        let gaps = zip(steady.dropFirst(), steady).map { $0 - $1 }.suffix(100)
        #expect(!gaps.isEmpty)
        #expect(gaps.allSatisfy { $0 >= Self.second / iops - 1000 && $0 <= Self.second / iops + 1000 })
    }

    @Test(arguments: [(UInt64(10_000_000), 65536), (100_000_000, 131072), (10_485_760, 4096)])
    func greedyConsumerGetsTheByteRate(bps: UInt64, bytes: Int) throws {
        var t = try Self.throttle("bps-write=\(bps)")
        let times = Self.greedy(&t, from: 5 * Self.second, to: 15 * Self.second, write: true, bytes: bytes)
        let moved = Double(times.count * bytes)
        let expected = Double(bps) * 10.1
        #expect(abs(moved - expected) <= Double(bytes) * 1.5, "\(moved) bytes, expected about \(expected)")
    }

    @Test func theGateIsDirectionBlindButTheChargeIsNot() throws {
        var t = try Self.throttle("iops-read=10")
        // Writes are not charged to a read limit.
        for _ in 0..<100 { t.charge(write: true, bytes: 4096, now: 0) }
        #expect(t.wait(now: 0) == 0)
        // Reads are; once they are in debt nothing is let through, a write neither (the engine
        // cannot know what the next request is before consuming it).
        for _ in 0..<3 { t.charge(write: false, bytes: 4096, now: 0) }
        #expect(Self.near(t.wait(now: 0), 200_000_000), "3 - 1 requests of debt at 10/s")
    }

    @Test func bytesAndRequestsEachHold() throws {
        var t = try Self.throttle("iops-total=1000,bps-total=1M")
        // 1 MiB/s with 1 MiB requests: the byte bucket (104857.6 bytes) decides.
        t.charge(write: false, bytes: 1 << 20, now: 0)
        let wait = t.wait(now: 0)
        #expect(wait >= 899_999_000 && wait <= 900_001_000, "\(wait) ns: 0.9 MiB of debt at 1 MiB/s")
    }

    @Test func burstRunsAtMaxForItsLengthThenAtTheAverage() throws {
        var t = try Self.throttle("iops-total=100,iops-total-max=1000,iops-total-max-length=2")
        let times = Self.greedy(&t, from: 0, to: 20 * Self.second)
        func count(_ from: Double, _ to: Double) -> Int {
            times.filter { $0 >= UInt64(from * 1e9) && $0 < UInt64(to * 1e9) }.count
        }
        // While the burst lasts: 1000/s (plus the burst bucket's tenth of a second at first).
        #expect(count(0, 1) >= 1000 && count(0, 1) <= 1101, "\(count(0, 1)) in the first second")
        // The burst is over once the main bucket (1000 x 2 = 2000) is full: then 100/s.
        #expect(abs(count(10, 20) - 1000) <= 2, "\(count(10, 20)) in 10 s after the burst")
        // Total: the full main bucket (and the one request of debt) plus what leaked at the
        // average the whole time.
        let expected = 2000 + 100 * 20
        #expect(times.count >= expected && times.count <= expected + 2, "\(times.count), about \(expected)")
    }

    @Test func burstWithoutLengthIsOneBucketOfMax() throws {
        var t = try Self.throttle("iops-total=100,iops-total-max=500")
        // A bucket of 500 (max x 1 s): 501 at once, then the average.
        var n = 0
        while t.wait(now: 0) == 0 {
            t.charge(write: false, bytes: 512, now: 0)
            n += 1
        }
        #expect(n == 501)
    }

    @Test func newLimitsStartWithEmptyBuckets() throws {
        var t = try Self.throttle("iops-total=1")
        for _ in 0..<5 { t.charge(write: false, bytes: 4096, now: 0) }
        #expect(t.wait(now: 0) > 4 * Self.second)
        t.configure(try ThrottleLimits.parse("iops-total=1000"), now: 1000)
        #expect(t.wait(now: 1000) == 0)
        #expect(t.configuredAt == 1000 && t.firstConsumptionAfterConfigure == 0)
        t.charge(write: false, bytes: 4096, now: 1500)
        #expect(t.firstConsumptionAfterConfigure == 1500)
        t.configure(ThrottleLimits(), now: 2000)
        #expect(!t.isEnabled && t.wait(now: 2000) == 0)
    }

    @Test func waitsAreAccountedOncePerWait() throws {
        var t = try Self.throttle("iops-total=10")
        t.beginWait(now: 100)
        t.beginWait(now: 200)
        #expect(t.isWaiting && t.delayedRequests == 1)
        #expect(t.throttledNanos(now: 1100) == 1000, "the wait in progress counts")
        t.endWait(now: 600)
        t.endWait(now: 900)
        #expect(!t.isWaiting && t.throttledNanos(now: 5000) == 500)
        t.beginWait(now: 1000)
        // A change of limits ends the wait.
        t.configure(ThrottleLimits(), now: 1300)
        #expect(!t.isWaiting && t.delayedRequests == 2 && t.throttledNanos(now: 9999) == 800)
    }

    // MARK: - ThrottleLimits

    @Test func limitsParseAndPrintBack() throws {
        let l = try ThrottleLimits.parse(
            "iops-read=200,iops-write=100,bps-total=10M,bps-total-max=20M,bps-total-max-length=5")
        #expect(l[.iopsRead].average == 200 && l[.iopsWrite].average == 100)
        #expect(l[.bpsTotal] == ThrottleLimits.Limit(average: 10 << 20, burst: 20 << 20, burstSeconds: 5))
        #expect(l.isLimited)
        #expect(
            l.text == "iops-read=200,iops-write=100,bps-total=10485760,bps-total-max=20971520,bps-total-max-length=5")
        #expect(try ThrottleLimits.parse(l.text) == l)
        #expect(try ThrottleLimits.parse("none") == ThrottleLimits())
        #expect(try ThrottleLimits.parse("") == ThrottleLimits())
        #expect(ThrottleLimits().text == "none" && !ThrottleLimits().isLimited)
        #expect(try ThrottleLimits.parse("iops-total=0") == ThrottleLimits(), "0 is no limit, as in QEMU")
    }

    @Test(arguments: [
        ("iops-total=200,iops-read=100", "cannot be used together"),
        ("bps-write=1M,bps-total-max=2M", "cannot be used together"),
        ("iops-total-max=100", "requires iops-total"),
        ("iops-total=200,iops-total-max=100", "must not be lower"),
        ("iops-total=200,iops-total-max-length=3", "requires iops-total-max"),
        ("iops-total=200,iops-total-max=300,iops-total-max-length=0", "at least 1"),
        ("iops-totl=5", "unknown limit"),
        ("iops-total=5,iops-total=6", "given twice"),
        ("iops-total=5x", "not a whole number"),
        ("iops-total=-5", "not a whole number"),
        ("bps-total=5Q", "bps-total"),
        ("iops-total", "expected KEY=VALUE"),
        ("iops-total=5,", "expected KEY=VALUE"),
        ("iops-total=1000000000000001", "at most"),
        ("iops-total=1000,iops-total-max=1000000000,iops-total-max-length=10000000", "at most"),
    ])
    func invalidLimitsAreRefused(text: String, message: String) {
        do {
            let limits = try ThrottleLimits.parse(text)
            Issue.record("'\(text)' was accepted as \(limits.text)")
        } catch {
            #expect(error.message.contains(message), "'\(text)': \(error.message)")
        }
    }
}
