import CLibAIO
import Glibc

@testable import TapDisk

/// A frontend that keeps its ring full of requests answered without any I/O (zero-length
/// DISCARDs): it refills and pushes 8 at a time and reaps as fast as it can, spinning instead of
/// sleeping, and kicks only when the push says so. New requests then keep arriving while the disk
/// is still answering, so it needs more than `Engine.roundsPerService` rounds in a row: the case
/// where a loop that stops early and sleeps, with the ring unarmed, never wakes again.
enum NoIOStream {
    struct Result: CustomStringConvertible {
        var sent = 0
        var answered = 0
        var okay = 0
        var duplicates = 0
        var unknown = 0
        /// The ring was full, nothing arrived for the stall timeout, and requests were unanswered.
        var stalled = false

        var description: String {
            "sent \(sent) answered \(answered) okay \(okay) duplicates \(duplicates) unknown \(unknown) stalled \(stalled)"
        }
    }

    /// Sends `total` zero-length DISCARDs (ids 0..<total) and waits for every answer.
    static func run(_ frontend: BlockFrontend, total: Int, stallMilliseconds: Int32 = 3000) -> Result {
        var result = Result()
        var seen = [Bool](repeating: false, count: total)
        func reap() -> Int {
            var got = 0
            _ = frontend.reap { r in
                got += 1
                guard r.id < UInt64(total) else {
                    result.unknown += 1
                    return
                }
                if seen[Int(r.id)] { result.duplicates += 1 }
                seen[Int(r.id)] = true
                result.answered += 1
                if r.status == 0 { result.okay += 1 }
            }
            return got
        }
        var lastProgress = MonotonicClock.nanoseconds()
        while result.answered < total {
            var produced = 0
            // Small pushes keep requests arriving while the disk is still answering the last ones.
            while result.sent < total && frontend.freeRequests > 0 && produced < 8 {
                frontend.enqueue(BlkifRequest.discard(id: UInt64(result.sent), sector: 0, sectors: 0))
                result.sent += 1
                produced += 1
            }
            if produced > 0 { frontend.push() }
            if reap() > 0 {
                lastProgress = MonotonicClock.nanoseconds()
                continue
            }
            // Spin rather than sleep, so new requests land while the disk is still in the round
            // that answered the last ones; a stall is no progress for `stallMilliseconds`.
            if MonotonicClock.nanoseconds() - lastProgress > UInt64(stallMilliseconds) * 1_000_000 {
                result.stalled = true
                return result
            }
        }
        return result
    }
}
