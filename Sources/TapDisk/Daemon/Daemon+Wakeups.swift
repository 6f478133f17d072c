import CLibAIO
import Glibc

/// When the daemon wakes without an fd saying so: one one-shot timer, armed for the earliest
/// thing that is due, and disarmed when nothing is.
///
/// A fixed 500 ms timer used to run always, so 200 idle disks woke 400 times a second. Now an
/// idle daemon without `--low-space-threshold` and without systemd's watchdog sleeps in
/// epoll until a request, a control message, a signal or an image change arrives. What still
/// needs a clock, and why:
/// - a `nospace` pause of a file image: free space rising (someone deleting files) raises no
///   event the daemon can watch, so it is sampled every 500 ms (PROTOCOL §5.2 auto-resume,
///   "checked at least once a second"), and the pause timeout is a deadline;
/// - `--low-space-threshold`: free space falls when anyone on the filesystem writes, which this
///   daemon cannot see (fanotify would need CAP_SYS_ADMIN and wake it for every tenant's
///   writes), so free space is sampled every 990 ms while a threshold is set (§5.4
///   `low-space`, "checked at least once a second"); without one, never;
/// - NBD: a handshake's deadline, and a client whose queued replies have not moved (the stall
///   bound), only while there is one (Daemon+NBD.swift);
/// - the image watch's quiet window, the listener's EMFILE back-off and lingering refusals,
///   systemd's watchdog, and a status line whose counters moved (at most every 5 s).
extension Daemon {
    static let pollIntervalNanos: UInt64 = 500_000_000
    static let imageQuietNanos: UInt64 = 250_000_000
    /// Under a second, so a timer that fires a little late still samples once a second.
    static let lowSpaceIntervalNanos: UInt64 = 990_000_000
    static let statusIntervalNanos: UInt64 = 5_000_000_000

    /// The earliest CLOCK_MONOTONIC time something is due, or nil when nothing is. Runs after
    /// every wakeup: comparisons only, no syscall, no allocation.
    func nextDeadlineNanos() -> UInt64? {
        var next = UInt64.max
        if let tick = engine.nextTickNanos(after: lastPeriodicNanos, interval: Self.pollIntervalNanos) {
            next = min(next, tick)
        }
        if imageWatch == nil || admission.needsTimer { next = min(next, lastPeriodicNanos &+ Self.pollIntervalNanos) }
        if let quiet = imageWatchQuietUntilNanos { next = min(next, quiet) }
        if config.lowSpaceThreshold != nil { next = min(next, lastPeriodicNanos &+ Self.lowSpaceIntervalNanos) }
        if let ping = watchdogPingNanos { next = min(next, lastWatchdogNanos &+ ping) }
        if notifiesSystemd && statusIsStale { next = min(next, lastStatusNanos &+ Self.statusIntervalNanos) }
        if let nbdDue = nbdDeadlineNanos() { next = min(next, nbdDue) }
        return next == .max ? nil : next
    }

    /// Arms the timer for `nextDeadlineNanos` (or disarms it); a syscall only when that changed,
    /// so a busy disk's wakeups do not each pay for one.
    func armTimer() {
        let deadline = nextDeadlineNanos() ?? 0
        guard deadline != armedDeadlineNanos else { return }
        armedDeadlineNanos = deadline
        _ = clibaio_timerfd_arm(timer.rawValue, deadline)
    }

    /// The timer fired: everything that may be due runs (each check is cheap), and each moves
    /// its own deadline past now, so the timer never fires again for the same thing.
    func periodic() {
        let now = MonotonicClock.nanoseconds()
        lastPeriodicNanos = now
        engine.tick(nowNanos: now)
        nbdPeriodic(now: now)
        if let until = imageWatchQuietUntilNanos, now >= until, let imageWatch {
            if imageWatch.drain() {
                // Still changing: check, and stay out of epoll for another window.
                checkImageSize()
                imageWatchQuietUntilNanos = now &+ Self.imageQuietNanos
            } else {
                // Quiet: back in epoll (level-triggered, so an event since the drain shows at once).
                imageWatchQuietUntilNanos = nil
                try? loop.add(imageWatch.fd.rawValue, token: Token.imageWatch)
            }
        }
        if imageWatch == nil { checkImageSize() }
        if admission.shouldResumeListening(nowNanos: now) {
            try? loop.add(listener.rawValue, token: Token.listener)
        }
        checkLowSpace()
        if let ping = watchdogPingNanos, now &- lastWatchdogNanos >= ping {
            lastWatchdogNanos = now
            _ = try? notifier.watchdogPing()
        }
        if notifiesSystemd && statusIsStale && now &- lastStatusNanos >= Self.statusIntervalNanos { sendStatus() }
    }

    /// The image watch reported something: check the size now, then leave epoll for a quiet
    /// window (`periodic` drains and re-checks at its end), so a stream of events costs at most
    /// one wakeup per window.
    func imageWatchFired() {
        guard let imageWatch else { return }
        if imageWatch.drain() { checkImageSize() }
        loop.remove(imageWatch.fd.rawValue)
        imageWatchQuietUntilNanos = MonotonicClock.nanoseconds() &+ Self.imageQuietNanos
    }

    private var statusIsStale: Bool {
        let c = engine.counters
        return statusCounters != (c.responses, c.inFlight, c.held)
    }

    func checkLowSpace() {
        guard let threshold = config.lowSpaceThreshold, let space = engine.image.filesystemSpace() else { return }
        let limit = threshold.thresholdBytes(filesystemSizeBytes: space.totalBytes)
        if space.freeBytes < limit {
            if lowSpaceArmed {
                lowSpaceArmed = false
                logger.warning(
                    "low space",
                    metadata: [
                        "image": "\(config.imagePath)", "fs-free-bytes": "\(space.freeBytes)",
                        "threshold-bytes": "\(limit)",
                    ])
                broadcast(
                    event: "low-space", ["fs-free-bytes": .uint(space.freeBytes), "threshold-bytes": .uint(limit)])
            }
        } else if space.freeBytes > limit {
            lowSpaceArmed = true
        }
    }

    func sendStatus() {
        lastStatusNanos = MonotonicClock.nanoseconds()
        let c = engine.counters
        statusCounters = (c.responses, c.inFlight, c.held)
        let text =
            "state=\(engine.state.name)\(engine.state.reason.map { "(\($0))" } ?? "") io-status=\(engine.ioStatus.rawValue) in-flight=\(c.inFlight) held=\(c.held) ok=\(c.responsesOkay) error=\(c.responsesError)"
        _ = try? notifier.status(text)
    }
}
