import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// `stats`' `paused-seconds`: time paused per reason, accumulated at state changes.
@Suite struct PausedTimeTests {
    @Test func accumulatesPerReasonAndCountsThePauseInProgress() {
        var t = PausedTime()
        t.transition(to: .running, now: 100)
        t.transition(to: .paused(.nospace), now: 1_000)
        #expect(t.nanoseconds(.nospace, now: 1_500) == 500)
        // A change of reason ends one pause and starts the next.
        t.transition(to: .paused(.ioError), now: 3_000)
        t.transition(to: .running, now: 3_250)
        t.transition(to: .paused(.nospace), now: 10_000)
        #expect(t.nanoseconds(.nospace, now: 10_100) == 2_000 + 100)
        #expect(t.nanoseconds(.ioError, now: 10_100) == 250)
        #expect(t.nanoseconds(.operatorRequest, now: 10_100) == 0)
        t.transition(to: .halted, now: 11_000)
        #expect(t.nanoseconds(.nospace, now: 99_999) == 3_000)
    }

    @Test func anOperatorPauseIsTimedFromPauseToResume() throws {
        let h = try EngineHarness(imageBytes: 4 << 20)
        h.engine.pause()
        let paused = MonotonicClock.nanoseconds()
        usleep(20_000)
        let before = MonotonicClock.nanoseconds()
        _ = h.engine.resume(failHeld: false)
        let after = MonotonicClock.nanoseconds()
        let recorded = h.engine.pausedTime.nanoseconds(.operatorRequest, now: after + 1_000_000_000)
        // At least the time between the two calls, at most the time around them; nothing since.
        #expect(recorded >= before - paused)
        #expect(recorded <= after - paused + 1_000_000)
        #expect(h.engine.pausedTime.nanoseconds(.nospace, now: after) == 0)
    }
}
