import CLibAIO
import Glibc

/// Detach (each front attaches in its own folder), operator pause and resume, the periodic tick,
/// and the state machine: what control commands and the timer do to a disk, between requests.
extension Engine {
    package enum AttachError: Error, Equatable {
        case alreadyAttached
        case ringOrderTooLarge
        /// `req_prod - rsp_prod > ring-entries` at attach (§3).
        case ringState
    }

    /// Starts a detach or a disconnect: stop consuming, answer held requests ERROR (§6.4). The
    /// caller waits for `isDrained`, then calls `finishDetach`.
    package func beginDetach() {
        guard isAttached, state != .closing else { return }
        setState(.closing)
        failAllHeld()
        service()
    }

    /// Unmaps and closes once nothing is in flight. Returns `req_cons` (0 for a virtqueue). Called through
    /// `DiskLoop.finishDetach`, which first takes the kick eventfd out of the epoll set.
    package func finishDetach() -> UInt32 {
        precondition(isDrained, "unmapping with I/O in flight")
        pushResponses()
        // The detach switch: each front drops its own state and says what `req-cons` to report.
        let reqCons: UInt32 =
            switch front {
            case .blkif: detachRing()
            case .virtio: detachVirtqueue()
            case .nbd: detachNBD()
            case .none: 0
            }
        table = RequestTable(capacity: 0)
        isAttached = false
        front = .none
        frontStopped = false
        releaseBounceBuffer()
        kickFD = -1
        barrierIndex = nil
        submitBackoff = false
        operatorHold = false
        setState(.idle)
        return reqCons
    }

    /// Operator pause (§6.3): stop consuming; the caller replies once `isQuiescent`. During a
    /// `nospace`/`io-error` pause the reason stays (§6.2: the first reason stays), but the operator's
    /// pause still holds: neither auto-resume nor the pause timeout ends it, only `resume`.
    package func pause() {
        if state == .running {
            enterPause(.operatorRequest)
        } else if state.isPaused {
            operatorHold = true
        }
    }

    /// Ends a pause (§6.2): resubmit held requests in consumption order, or fail them.
    package func resume(failHeld: Bool) -> (resubmitted: Int, failed: Int) {
        guard state.isPaused else { return (0, 0) }
        operatorHold = false
        var result = (resubmitted: 0, failed: 0)
        // Running again before anything is resubmitted: a resubmission that fails at once (a
        // synchronous DISCARD) must start a new pause, not join the one that is ending.
        ioStatus = syncFailed ? .failed : .ok
        pauseFreeBytes = nil
        setState(.running)
        if failHeld {
            result.failed = failAllHeld()
        } else {
            for index in heldInConsumptionOrder() {
                table.records[index].phase = .queued
                counters.held -= 1
                counters.inFlight += 1
                counters.resubmittedRequests += 1
                result.resubmitted += 1
                startFromFirstStage(index)
            }
        }
        service()
        return result
    }

    /// Periodic work (at least once a second): pause timeout and nospace auto-resume (§6.2).
    package func tick(nowNanos: UInt64 = MonotonicClock.nanoseconds()) {
        guard case .paused(let reason) = state, reason != .operatorRequest, !operatorHold else { return }
        // Reap first, so the held bytes below include every write that has already failed.
        service()
        guard state == .paused(reason) else { return }
        // Seconds compared as seconds: `--pause-timeout` in nanoseconds would overflow past 584 years.
        if policy.pauseTimeoutSeconds > 0, (nowNanos &- pauseStartedNanos) / 1_000_000_000 >= policy.pauseTimeoutSeconds
        {
            failAllHeld()
            pauseFreeBytes = nil
            setState(.running)
            service()
            return
        }
        guard reason == .nospace, let now = image.filesystemSpace()?.freeBytes else { return }
        // Writes in flight when the pause began go on failing and give back what ext4 had
        // reserved for them, so free space rises by up to their size without anyone adding any.
        // They are held, so waiting for room for the held writes on top of the baseline tells
        // that apart from space an operator made. The baseline is the lowest free space seen
        // since the pause began, not the first sample: writes still in flight then may take what
        // was free after it (they were submitted later, or ENOSPC came from a request too large
        // for what was left), and a baseline above what the filesystem settled at would wait for
        // space that will never come.
        let baseline = lowerPauseBaseline(to: now)
        if now > baseline &+ heldWriteBytes() { _ = resume(failHeld: false) }
    }

    /// When `tick` must run next (CLOCK_MONOTONIC ns), or nil when it has nothing to do: the
    /// daemon arms its timer only for this, so a disk not in a pause that `tick` can end sleeps.
    /// A `nospace` pause of a file image samples free space every `interval` after
    /// `lastTickNanos` (nothing notifies of space someone else freed); the timeout is a deadline.
    package func nextTickNanos(after lastTickNanos: UInt64, interval: UInt64) -> UInt64? {
        guard case .paused(let reason) = state, reason != .operatorRequest, !operatorHold else { return nil }
        var next = UInt64.max
        let timeout = policy.pauseTimeoutSeconds
        if timeout > 0, timeout <= (UInt64.max - pauseStartedNanos) / 1_000_000_000 {
            next = pauseStartedNanos + timeout * 1_000_000_000
        }
        if reason == .nospace && !image.geometry.isBlockDevice { next = min(next, lastTickNanos &+ interval) }
        return next == .max ? nil : next
    }

    /// Lowers the auto-resume baseline to `freeBytes` if that is lower; returns the baseline.
    @discardableResult
    func lowerPauseBaseline(to freeBytes: UInt64) -> UInt64 {
        let baseline = min(pauseFreeBytes ?? freeBytes, freeBytes)
        pauseFreeBytes = baseline
        return baseline
    }

    /// Bytes the held writes need (their data; FLUSH and BARRIER are never held).
    func heldWriteBytes() -> UInt64 {
        guard isAttached, counters.held > 0 else { return 0 }
        var bytes: UInt64 = 0
        for i in 0..<table.capacity where table.records[i].phase == .held && table.records[i].operation == .write {
            bytes &+= UInt64(table.records[i].dataBytes)
        }
        return bytes
    }

    func setState(_ new: DiskState) {
        guard new != state else { return }
        if state.isPaused || new.isPaused { pausedTime.transition(to: new, now: MonotonicClock.nanoseconds()) }
        state = new
        onEvent(.stateChanged(new))
    }

    func enterPause(_ reason: PauseReason) {
        pauseStartedNanos = MonotonicClock.nanoseconds()
        pauseFreeBytes = reason == .nospace ? image.filesystemSpace()?.freeBytes : nil
        setState(.paused(reason))
    }

    func halt(_ message: String) {
        guard state != .halted else { return }
        if state.isPaused { pausedTime.transition(to: .halted, now: MonotonicClock.nanoseconds()) }
        state = .halted
        onEvent(.frontendViolation(message))
        onEvent(.stateChanged(.halted))
    }

    /// Answers every held request ERROR, with the errno that held it, without a new attempt
    /// (counts only in responses-error).
    @discardableResult
    func failAllHeld() -> Int {
        let held = heldInConsumptionOrder()
        for index in held { finish(index, .error(table.records[index].heldErrno)) }
        return held.count
    }

    func heldInConsumptionOrder() -> [Int] {
        guard isAttached, counters.held > 0 else { return [] }
        let records = table.records
        var held: [Int] = []
        for i in 0..<table.capacity where records[i].phase == .held { held.append(i) }
        return held.sorted { records[$0].sequence < records[$1].sequence }
    }
}
