import CLibAIO

/// What a `DiskLoop` hands the sources it does not own (control sockets, timers, signals, or a
/// test's frontend) and asks after each wakeup.
package protocol DiskLoopHost: AnyObject {
    /// One ready source whose token is not the loop's own.
    func dispatch(_ ready: Poller.Ready)
    /// Runs after the engine was serviced; returns true when there is more to do at once (an owed
    /// reply whose condition holds), so the loop must not sleep.
    func finishWakeup() -> Bool
}

/// One disk's event loop step: wait → service → dispatch → finish the wakeup.
///
/// This is the only loop that drives an `Engine`: the daemon runs it forever, and every in-process
/// test runs the same `step`, so a request that the daemon would never answer is never answered in
/// a test either. It acts only on what epoll reports ready, and sleeps only when the engine says
/// nothing more is to be done without a new event (`Engine.needsService`).
package final class DiskLoop {
    /// Tokens the loop owns; hosts use tokens from `firstHostToken` on.
    package enum Token {
        package static let completions: UInt64 = 1
        package static let kick: UInt64 = 2
        /// The engine's QoS timer (armed only while a limit holds consumption back).
        package static let throttle: UInt64 = 3
        package static let firstHostToken: UInt64 = 4
    }

    package let engine: Engine
    private let poller: Poller
    /// The attach whose kick eventfd is in the epoll set (0: none); the fd stays open until
    /// `finishDetach` has removed it.
    private var watchedGeneration: UInt64 = 0
    private var watchedKick: Int32 = -1
    private var hostHasMore = false
    /// The longest spin before sleeping in epoll (`--poll-us`); 0 turns polling off.
    package var pollNanos: UInt64 = 0
    /// `service` ran without arming `req_event`: arm (and re-check) before the next sleep.
    private var ringUnarmed = false
    /// Time spent spinning, and how often a spin found work (reported by `stats`).
    package private(set) var polledNanos: UInt64 = 0
    package private(set) var pollHits: UInt64 = 0
    package private(set) var pollMisses: UInt64 = 0

    package init(engine: Engine) throws(Errno) {
        self.engine = engine
        poller = try Poller()
        try poller.add(engine.completionFD, token: Token.completions)
        try poller.add(engine.throttleTimerFD, token: Token.throttle)
    }

    /// Adds a host source under a host token (≥ `Token.firstHostToken`).
    package func add(_ fd: Int32, token: UInt64, events: UInt32 = clibaio_EPOLLIN) throws(Errno) {
        precondition(token >= Token.firstHostToken, "token \(token) belongs to the loop")
        try poller.add(fd, token: token, events: events)
    }

    package func modify(_ fd: Int32, token: UInt64, events: UInt32) throws(Errno) {
        try poller.modify(fd, token: token, events: events)
    }

    package func remove(_ fd: Int32) { poller.remove(fd) }

    /// Waits up to `maxWaitMilliseconds` (-1: until something is ready), then services the engine
    /// if its fds were ready, dispatches the host's ready sources and lets the host finish the wakeup. A wait that ends with nothing ready and
    /// nothing pending does nothing at all: only readiness or owed work moves the disk.
    /// Returns whether anything was ready or pending (false: the wait timed out idle).
    @discardableResult
    package func step<Host: DiskLoopHost>(_ host: Host, maxWaitMilliseconds: Int32 = -1) -> Bool {
        syncKickWatch()
        let pending = engine.needsService || hostHasMore
        var polled = false
        if !pending && maxWaitMilliseconds != 0 { polled = poll() }
        if !pending && !polled && ringUnarmed {
            ringUnarmed = false
            polled = engine.prepareToSleep()
        }
        let timeout: Int32 =
            pending || polled ? (engine.submitBackoff && !hostHasMore && !polled ? 1 : 0) : maxWaitMilliseconds
        let count = poller.wait(timeoutMilliseconds: timeout)
        // The engine's sources first: completions are reaped before a control command or the
        // timer looks at the engine (auto-resume must see the failures that already happened).
        var engineReady = polled
        for i in 0..<count {
            switch poller.ready(at: i).token {
            case Token.completions:
                engine.drainCompletionSignal()
                engineReady = true
            case Token.kick:
                engine.drainKickSignal()
                engineReady = true
            case Token.throttle:
                engine.drainThrottleTimer()
                engineReady = true
            default: continue
            }
        }
        // Only the engine's own fds, or work it said it left, lead to `service`. A control command
        // that changes the engine (attach, resume, detach) services it itself; servicing after
        // every timer tick as well would hide a request the engine forgot, for up to a tick.
        if engineReady || engine.needsService {
            let polling = pollNanos > 0 && engine.canPollCompletions
            engine.service(armRing: !polling)
            ringUnarmed = polling
        }
        var hostReady = false
        for i in 0..<count {
            let ready = poller.ready(at: i)
            if ready.token < Token.firstHostToken { continue }
            host.dispatch(ready)
            hostReady = true
        }
        guard engineReady || hostReady || pending else { return false }
        hostHasMore = host.finishWakeup()
        syncKickWatch()
        return true
    }

    /// Bounded adaptive polling: instead of sleeping at once, watch the AIO completion ring and the
    /// request ring (no syscalls) for a while, when work is likely to come soon. With `n` requests
    /// in flight and a smoothed completion latency `L`, the next completion is due in about `L / n`:
    /// the loop spins up to twice that, at most `pollNanos`, and not at all when it is due later
    /// than `pollNanos` (at QD1 on a ~90 µs disk a 50 µs spin only burns the CPU that the frontend
    /// and the kernel's completion work need; measured in docs/performance.md). Never when nothing
    /// is in flight. Returns true when work was found.
    private func poll() -> Bool {
        guard pollNanos > 0, engine.isAttached, engine.canPollCompletions, engine.inFlight > 0 else { return false }
        let start = MonotonicClock.nanoseconds()
        let latency = engine.completionLatencyNanos
        let due = latency / UInt64(engine.inFlight)
        let window: UInt64 = latency == 0 ? pollNanos : (due > pollNanos ? 0 : min(pollNanos, 2 * due))
        guard window > 0 else { return false }
        let deadline = start + window
        var now = start
        var found = false
        while now < deadline {
            if engine.hasVisibleWork {
                found = true
                break
            }
            for _ in 0..<16 { clibaio_cpu_relax() }
            now = MonotonicClock.nanoseconds()
        }
        polledNanos &+= now &- start
        if found { pollHits &+= 1 } else { pollMisses &+= 1 }
        return found
    }

    /// Unwatches the kick eventfd, then unmaps and closes (`Engine.finishDetach`). The order
    /// matters: the frontend shares that eventfd's open file, so closing our fd alone would leave
    /// a stale, forever-readable registration in the epoll set that nothing could remove.
    package func finishDetach() -> UInt32 {
        unwatchKick()
        return engine.finishDetach()
    }

    /// Puts a new attachment's kick eventfd in the epoll set.
    private func syncKickWatch() {
        guard engine.isAttached, engine.kickFD >= 0, engine.attachGeneration != watchedGeneration else { return }
        unwatchKick()
        if (try? poller.add(engine.kickFD, token: Token.kick)) != nil {
            watchedKick = engine.kickFD
            watchedGeneration = engine.attachGeneration
        }
    }

    /// Takes the kick eventfd out of the epoll set before something may close it (a vhost-user
    /// message replacing or dropping the ring's kick): the front-end keeps its own fd of that
    /// eventfd, so a registration left behind would stay readable forever. The next `step`
    /// watches whatever kick the engine has then.
    package func releaseKickWatch() { unwatchKick() }

    private func unwatchKick() {
        if watchedKick >= 0 { poller.remove(watchedKick) }
        watchedKick = -1
        watchedGeneration = 0
    }
}
