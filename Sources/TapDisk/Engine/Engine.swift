import CLibAIO
import Glibc

/// One disk's data path: front → validation → Linux AIO → `finish` → the front's answer.
///
/// Single-threaded by design: the disk's `DiskLoop` calls `service` after a wakeup on the engine's
/// own fds (kick, completions) or while it owes work, the daemon's timer calls `tick`, and control
/// commands run between those calls on the same thread, so no state here is ever shared or
/// locked. Every failure of a READ/WRITE/DISCARD goes through `applyFailurePolicy`, the one place
/// the `report`/`pause` policy decides, and every record ends in `finish` with a `Completion`.
///
/// The core is front-neutral: it names no front's types on the request path. Each front keeps
/// its state in one stored struct (`blkif`, `virtio`) and its code in its own folder; the core
/// reaches a front only through the switches on `front` listed in EngineFront.swift.
package final class Engine {
    package let image: Image
    package let policy: FailurePolicy
    package let maxRingPageOrder: Int
    // The hot stored properties opt out of dynamic exclusivity checks: the engine runs on one
    // thread and never overlaps two accesses to one property, and the checks cost about half of
    // the daemon's user-space time at QD32 (perf: swift_beginAccess, AccessSet::insert).
    @exclusivity(unchecked) package internal(set) var state: DiskState = .idle
    /// Seconds paused per reason (`stats`' `paused-seconds`), updated at state changes.
    @exclusivity(unchecked) package internal(set) var pausedTime = PausedTime()
    @exclusivity(unchecked) package internal(set) var ioStatus: IOStatus = .ok
    /// A sync failed once: the kernel reports a writeback error to an fd only once, so no later
    /// FLUSH can prove anything (§5.3). Only a restart clears it.
    @exclusivity(unchecked) package internal(set) var syncFailed = false
    @exclusivity(unchecked) package internal(set) var counters = Counters()
    /// Consumption-to-answer latency per operation (`finish`, `answerAtConsumption`).
    @exclusivity(unchecked) var latency = LatencyHistograms()
    /// Receives state changes and failures; never called for successful requests.
    package var onEvent: (EngineEvent) -> Void = { _ in }

    @exclusivity(unchecked) var aio: AIOContext
    @exclusivity(unchecked) var table = RequestTable(capacity: 0)
    @exclusivity(unchecked) package internal(set) var isAttached = false
    /// Where requests come from: set by `attach` (blkif) or `attachVirtio`, `.none` when idle.
    @exclusivity(unchecked) package internal(set) var front: EngineFront = .none
    /// The front must not be read (a vhost-user message that stops the ring waits for the
    /// drain): consumption stops, I/O in flight goes on.
    @exclusivity(unchecked) package internal(set) var frontStopped = false
    /// The blkif front's state (Blkif/BlkifFront.swift); empty unless `front == .blkif`.
    @exclusivity(unchecked) var blkif = BlkifFront()
    /// The vhost-user-blk front's state (Virtio/VirtioFront.swift).
    @exclusivity(unchecked) var virtio = VirtioFront()
    /// The NBD front's state (NBD/NBDFront.swift); empty unless `front == .nbd`.
    @exclusivity(unchecked) var nbd = NBDFront()
    /// Bytes moved through the bounce buffer in this `service()`; past `bounceBytesPerService`
    /// the loop gets its turn (bounced I/O is synchronous: control, signals and vhost-user
    /// messages must not wait behind a guest that sends nothing but misaligned buffers).
    @exclusivity(unchecked) var bouncedBytesThisService = 0
    static let bounceBytesPerService = 8 << 20
    /// Guest buffers must be aligned to this for `O_DIRECT` (0: the image is not opened
    /// `O_DIRECT`, anything goes); misaligned ones are bounced (Engine+Bounce.swift).
    @exclusivity(unchecked) var bounceAlignment = 0
    /// Allocated at the first misaligned request of an attachment, freed at detach.
    var bounceBuffer: UnsafeMutableRawPointer? = nil
    var bounceCapacity = 0
    /// The front's kick eventfd (the ring's, or the virtqueue's from SET_VRING_KICK), -1 if none:
    /// the event loop watches it whichever front set it.
    @exclusivity(unchecked) package internal(set) var kickFD: Int32 = -1
    /// Counts attaches, so the event loop can tell a new kick eventfd from an old one that had
    /// the same fd number (closed on detach, reused by the next attach).
    @exclusivity(unchecked) package internal(set) var attachGeneration: UInt64 = 0
    @exclusivity(unchecked) var nextSequence: UInt64 = 0
    /// When each table index was last handed to `io_submit` (the completion latency estimate).
    @exclusivity(unchecked) var submittedAt: UnsafeMutablePointer<UInt64>
    /// Smoothed submit→completion latency (EWMA, 1/8), for the polling window.
    @exclusivity(unchecked) package internal(set) var completionLatencyNanos: UInt64 = 0
    /// The clock as the completions being handled were reaped (0 outside `reapCompletions`):
    /// `finish` takes it as their answer time instead of reading the clock once more per request.
    @exclusivity(unchecked) var reapedAt: UInt64 = 0
    /// Index of the BARRIER that stops consumption until it is answered.
    @exclusivity(unchecked) var barrierIndex: Int? = nil
    /// Submission hit EAGAIN: retry after completions or a short sleep.
    @exclusivity(unchecked) package internal(set) var submitBackoff = false
    /// The disk as served now: the image's geometry at open, with `sectors` updated by
    /// `updateGeometry(sectors:)` when the image is resized underneath (Engine+Resize.swift).
    package internal(set) var geometry: ImageGeometry
    /// When the current nospace/io-error pause began, and the lowest free space seen since then
    /// (the auto-resume baseline: `tick`, `lowerPauseBaseline`).
    var pauseStartedNanos: UInt64 = 0
    var pauseFreeBytes: UInt64? = nil
    /// An operator `pause` arrived during a `nospace`/`io-error` pause: only `resume` ends it.
    var operatorHold = false
    /// The QoS limits and their buckets (Engine+Throttle.swift), checked in `canConsume`.
    @exclusivity(unchecked) package internal(set) var throttle = Throttle()
    /// Wakes the loop when a limit lets consumption go on; armed only while one holds it back.
    let throttleTimer: FileDescriptor
    /// What `throttleTimer` is armed for (0: disarmed).
    @exclusivity(unchecked) var throttleDeadline: UInt64 = 0

    package init(image: consuming Image, policy: FailurePolicy = FailurePolicy(), maxRingPageOrder: Int = 4)
        throws(Errno)
    {
        precondition(maxRingPageOrder >= 0 && maxRingPageOrder <= RingLayout.maxPageOrder)
        // One iocb per outstanding request at most, so the largest ring bounds the context.
        aio = try AIOContext(capacity: Int32(RingLayout.entries(pageOrder: maxRingPageOrder)))
        let most = Int(RingLayout.entries(pageOrder: maxRingPageOrder))
        submittedAt = .allocate(capacity: most)
        submittedAt.initialize(repeating: 0, count: most)
        throttleTimer = FileDescriptor(adopting: try Errno.check(clibaio_qos_timer_create()))
        geometry = image.geometry
        self.image = image
        self.policy = policy
        self.maxRingPageOrder = maxRingPageOrder
    }

    deinit { submittedAt.deallocate() }

    #if TAPDISK_FAULT_INJECTION
        /// The fault-injection seam (debug builds only).
        package var faults: FaultInjector {
            get { aio.faults }
            set { aio.faults = newValue }
        }
    #endif

    /// The completion eventfd the event loop must watch (drained by `drainCompletionSignal`).
    package var completionFD: Int32 { aio.eventFD.rawValue }
    /// Requests consumed and neither answered nor held (queued, submitted or waiting on a barrier).
    package var inFlight: Int { Int(counters.inFlight) }
    package var held: Int { Int(counters.held) }
    /// No I/O is queued or in the kernel: what an operator `pause` waits for. Held requests wait
    /// for a decision, not for I/O, and so does a BARRIER that waits for them.
    package var isQuiescent: Bool {
        if let b = barrierIndex, table.records[b].phase == .waitingForBarrier { return counters.inFlight == 1 }
        return counters.inFlight == 0
    }
    /// Every consumed request has been answered: what detach waits for before unmapping.
    package var isDrained: Bool { counters.inFlight == 0 && counters.held == 0 }

    // MARK: - Servicing (the event loop calls this when the engine's fds were ready or work is owed)

    /// Rounds of reap → consume → submit → push in one `service()` before it yields to the
    /// event loop, so control sockets and signals are not starved by a busy frontend. Tests lower
    /// it to reach the yield path often (the daemon: `TAPDISK_ROUNDS_PER_SERVICE`, debug builds).
    @exclusivity(unchecked) package var roundsPerService = 64

    /// `service()` stopped with work left (the round limit, or `io_submit` said EAGAIN): the event
    /// loop must call it again without sleeping (after at most 1 ms for EAGAIN).
    @exclusivity(unchecked) package internal(set) var needsService = false
    /// How often `service` stopped at `roundsPerService` with requests still arriving (tests
    /// use it to prove they reached that path).
    @exclusivity(unchecked) package internal(set) var roundLimitYields: UInt64 = 0
    #if TAPDISK_FAULT_INJECTION
        /// Runs after each round's push, before the check for more requests. Tests use it to let
        /// a frontend thread run there, so the round-limit path is reached however the scheduler
        /// places the threads (on a busy machine both may share one CPU and never overlap).
        package var afterRoundForTesting: (() -> Void)?
    #endif

    /// Reap, consume, submit, push, until the ring is quiet and armed for a kick. Returns whether
    /// more work remains, as Linux blkback's `do_block_io_op` returns `more_to_do`: the caller must
    /// then run again without sleeping, because nothing else may wake it (the ring was left
    /// unarmed, or the work needs no I/O and so no completion will arrive).
    ///
    /// A BARRIER is started the moment its predecessors are done: right after it is consumed
    /// (an idle disk has nothing in flight, so no completion would come to start it later) and
    /// after each reap.
    ///
    /// With `armRing` false (the loop is polling) `req_event` is left alone, so the frontend does
    /// not kick while the loop watches the ring anyway; `prepareToSleep` arms it before a sleep.
    @discardableResult
    package func service(armRing: Bool = true) -> Bool {
        guard isAttached else {
            needsService = false
            return false
        }
        bouncedBytesThisService = 0
        for _ in 0..<roundsPerService {
            reapCompletions()
            startBarrierIfReady()
            if canConsume {
                consumeRequests()
                startBarrierIfReady()
            }
            submitQueued()
            pushResponses()
            #if TAPDISK_FAULT_INJECTION
                afterRoundForTesting?()
            #endif
            if submitBackoff || bouncedBytesThisService >= Self.bounceBytesPerService {
                needsService = true
                return true
            }
            // A BARRIER whose last predecessor was answered in this round (a request that
            // `io_submit` itself refused is answered inside `submitQueued`) needs another round:
            // nothing in the kernel would wake the loop for it.
            if barrierIsStartable { continue }
            guard canConsume && frontHasRequests(arm: armRing) else {
                needsService = false
                return false
            }
        }
        roundLimitYields &+= 1
        needsService = true
        return true
    }

    /// The one consumption gate of every front. Its last term is the QoS check
    /// (Engine+Throttle.swift): false while a limit holds the next request back.
    var canConsume: Bool {
        state == .running && barrierIndex == nil && !frontStopped && (!throttle.isEnabled || admitUnderLimits())
    }

    // MARK: - The front: four of the five switches on which one it is (EngineFront.swift)

    func consumeRequests() {
        switch front {
        case .blkif: consumeRing()
        case .virtio: consumeVirtqueue()
        case .nbd: consumeNBD()
        case .none: break
        }
    }

    /// Whether the front has requests left. With `arm`, first asks the frontend to kick for the
    /// next one and then looks again (Xen's final check; virtio's enable-notification re-check).
    @inline(__always)
    func frontHasRequests(arm: Bool) -> Bool {
        switch front {
        case .blkif: ringHasRequests(arm: arm)
        case .virtio: virtqueueHasRequests(arm: arm)
        case .nbd: nbdHasRequests
        case .none: false
        }
    }

    func pushResponses() {
        switch front {
        case .blkif: pushRing()
        case .virtio: notifyVirtqueue()
        case .nbd: pushNBD()
        case .none: break
        }
    }

    /// iocbs per `io_submit` while a burst is being consumed (the rest goes at the end of the
    /// round). Small enough that the first request is on the disk after a few µs.
    static let submitBatch = 8

    @inline(__always)
    func countRequest(_ operation: DiskOperation) {
        switch operation {
        case .read: counters.readRequests += 1
        case .write: counters.writeRequests += 1
        case .flush: counters.flushRequests += 1
        case .barrier: counters.barrierRequests += 1
        case .discard, .writeZeroes: counters.discardRequests += 1
        }
    }

    /// Counts one answer by its status, whichever front sent it and whether or not a record
    /// carried it (a front's rejections are answered and counted without one).
    @inline(__always)
    func countResponse(_ status: Completion.Status) {
        switch status {
        case .ok: counters.responsesOkay += 1
        case .error: counters.responsesError += 1
        case .notSupported: counters.responsesNotSupported += 1
        }
    }

    /// A counted request answered without a record, in the instant it was consumed (a blkif
    /// DISCARD of 0 sectors, or no free record): its latency is 0, so that each histogram's
    /// count stays the answered share of its `*-requests` counter.
    @inline(__always)
    func answerAtConsumption(_ operation: DiskOperation) {
        latency.record(LatencyHistograms.Operation(operation), nanoseconds: 0)
    }

    /// Consumption-to-answer latency of one operation so far (the control path: this allocates).
    package func latencySnapshot(_ operation: LatencyHistograms.Operation) -> LatencySnapshot {
        latency.snapshot(operation)
    }

    /// A front validated a request into `record` (its source iovecs already in the table):
    /// the I/O core takes it from here.
    @inline(__always)
    func begin(_ index: Int, _ record: RequestRecord) {
        counters.inFlight += 1
        var r = record
        r.sequence = nextSequence
        r.consumedAt = MonotonicClock.nanoseconds()
        r.phase = .queued
        nextSequence &+= 1
        table.records[index] = r
        if throttle.isEnabled { chargeLimits(r) }
        if r.operation == .barrier {
            table.records[index].phase = .waitingForBarrier
            barrierIndex = index
        } else {
            startFromFirstStage(index)
        }
    }

    /// Starts a request from its first stage: its first submission, and again on resume after a
    /// hold (everything it had done is redone).
    func startFromFirstStage(_ index: Int) {
        let record = table.records + index
        record.pointee.transferred = 0
        // A held request resubmitted after the image shrank was validated against the old size:
        // answer it ERROR (EINVAL: see `Completion`) rather than let the write extend the file again.
        let sectors =
            record.pointee.operation.isRangeOperation
            ? record.pointee.rangeSectors : UInt64(record.pointee.dataBytes / 512)
        if sectors > 0
            && (record.pointee.sector > geometry.sectors || sectors > geometry.sectors - record.pointee.sector)
        {
            finish(index, .error(EINVAL))
            return
        }
        switch record.pointee.operation {
        case .read, .write:
            record.pointee.stage = .data
            prepareData(index)
        case .flush:
            if syncFailed {
                refuseAfterFailedSync(index)
                return
            }
            record.pointee.stage = .sync
            prepareSync(index)
        case .barrier:
            if syncFailed {
                refuseAfterFailedSync(index)
                return
            }
            record.pointee.stage = record.pointee.dataBytes > 0 ? .data : .sync
            if record.pointee.stage == .data { prepareData(index) } else { prepareSync(index) }
        case .discard, .writeZeroes:
            discard(index)
        }
    }

    /// The waiting BARRIER is all that is left in flight: it may start.
    var barrierIsStartable: Bool {
        guard let index = barrierIndex else { return false }
        return table.records[index].phase == .waitingForBarrier && counters.inFlight == 1 && counters.held == 0
    }

    func startBarrierIfReady() {
        guard barrierIsStartable, let index = barrierIndex else { return }
        startFromFirstStage(index)
    }

    // MARK: - Answering: the response builder

    /// Answers a record and frees it: the response builder's one entry for records, whichever
    /// front wrote them. Every answer is timed, errors too: a guest waited for it as for any.
    /// The front translates `completion` into what its wire can say (the fifth switch).
    func finish(_ index: Int, _ completion: Completion) {
        let record = table.records + index
        let now = reapedAt != 0 ? reapedAt : MonotonicClock.nanoseconds()
        let consumed = record.pointee.consumedAt
        // `max`: a clock taken for a reap batch must never make a latency negative (wrap).
        latency.record(
            LatencyHistograms.Operation(record.pointee.operation), nanoseconds: max(now, consumed) - consumed)
        if record.pointee.phase == .held {
            counters.held -= 1
        } else {
            counters.inFlight -= 1
        }
        if barrierIndex == index { barrierIndex = nil }
        switch front {
        case .blkif: answerRing(record.pointee, completion)
        case .virtio: answerChain(record.pointee, completion)
        case .nbd: answerNBD(record.pointee, completion)
        case .none: preconditionFailure("a record outlived its front")
        }
        table.release(index)
    }
}
