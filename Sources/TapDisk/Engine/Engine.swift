import CLibAIO
import Glibc

/// One disk's data path: ring → validation → Linux AIO → response.
///
/// Single-threaded by design: the disk's `DiskLoop` calls `service` after every wakeup and `tick`
/// from the timer, and control commands run between those calls on the same thread, so no state here is
/// ever shared or locked. Every response is written by `answer`, and every failure of a
/// READ/WRITE/DISCARD goes through `failed`, the one place the `report`/`pause` policy decides.
package final class Engine {
    package let image: Image
    package let policy: FailurePolicy
    package let maxRingPageOrder: Int
    // The hot stored properties opt out of dynamic exclusivity checks: the engine runs on one
    // thread and never overlaps two accesses to one property, and the checks cost about half of
    // the daemon's user-space time at QD32 (perf: swift_beginAccess, AccessSet::insert).
    @exclusivity(unchecked) package private(set) var state: DiskState = .idle
    @exclusivity(unchecked) package private(set) var ioStatus: IOStatus = .ok
    /// A sync failed once: the kernel reports a writeback error to an fd only once, so no later
    /// FLUSH can prove anything (§4.3). Only a restart clears it.
    @exclusivity(unchecked) package private(set) var syncFailed = false
    @exclusivity(unchecked) package private(set) var counters = Counters()
    /// Receives state changes and failures; never called for successful requests.
    package var onEvent: (EngineEvent) -> Void = { _ in }

    @exclusivity(unchecked) private var aio: AIOContext
    private var attachment: RingAttachment? = nil
    @exclusivity(unchecked) private var table = RequestTable(capacity: 0)
    @exclusivity(unchecked) package private(set) var isAttached = false
    @exclusivity(unchecked) private var ring = BackendRing.detached
    /// Internal (not private) so `Engine+Resize.swift` can bound it by a new size.
    @exclusivity(unchecked) var validator = RequestValidator(
        dataPages: 0, sectors: 0, blockSectors: 1, readOnly: true, discardSupported: false)
    @exclusivity(unchecked) private var dataBase = UnsafeMutableRawPointer(bitPattern: 0x1000)!
    @exclusivity(unchecked) private var notifyFD: Int32 = -1
    @exclusivity(unchecked) package private(set) var kickFD: Int32 = -1
    /// Counts attaches, so the event loop can tell a new kick eventfd from an old one that had
    /// the same fd number (closed on detach, reused by the next attach).
    @exclusivity(unchecked) package private(set) var attachGeneration: UInt64 = 0
    @exclusivity(unchecked) private var nextSequence: UInt64 = 0
    /// When each table index was last handed to `io_submit` (the completion latency estimate).
    @exclusivity(unchecked) private var submittedAt: UnsafeMutablePointer<UInt64>
    /// Smoothed submit→completion latency (EWMA, 1/8), for the polling window.
    @exclusivity(unchecked) package private(set) var completionLatencyNanos: UInt64 = 0
    /// When requests were last consumed: a frontend active that recently is worth polling for.
    @exclusivity(unchecked) package private(set) var lastConsumeNanos: UInt64 = 0
    /// Index of the BARRIER that stops consumption until it is answered.
    @exclusivity(unchecked) private var barrierIndex: Int? = nil
    /// Submission hit EAGAIN: retry after completions or a short sleep.
    @exclusivity(unchecked) package private(set) var submitBackoff = false
    /// The disk as served now: the image's geometry at open, with `sectors` updated by
    /// `updateGeometry(sectors:)` when the image is resized underneath (Engine+Resize.swift).
    package internal(set) var geometry: ImageGeometry
    /// When the current nospace/io-error pause began, and the free space then (auto-resume).
    private var pauseStartedNanos: UInt64 = 0
    private var pauseFreeBytes: UInt64? = nil

    package init(image: consuming Image, policy: FailurePolicy = FailurePolicy(), maxRingPageOrder: Int = 4)
        throws(Errno)
    {
        precondition(maxRingPageOrder >= 0 && maxRingPageOrder <= RingLayout.maxPageOrder)
        // One iocb per outstanding request at most, so the largest ring bounds the context.
        aio = try AIOContext(capacity: Int32(RingLayout.entries(pageOrder: maxRingPageOrder)))
        let most = Int(RingLayout.entries(pageOrder: maxRingPageOrder))
        submittedAt = .allocate(capacity: most)
        submittedAt.initialize(repeating: 0, count: most)
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

    /// The completion eventfd the event loop must watch for `handleCompletions`.
    package var completionFD: Int32 { aio.eventFD.rawValue }
    /// Requests consumed and neither answered nor held (queued, submitted or waiting on a barrier).
    package var inFlight: Int { Int(counters.inFlight) }
    package var held: Int { Int(counters.held) }
    package var ringEntries: UInt32 { isAttached ? ring.entries : 0 }
    package var requestConsumerIndex: UInt32 { ring.reqCons }
    /// No I/O is queued or in the kernel: what an operator `pause` waits for. Held requests wait
    /// for a decision, not for I/O, and so does a BARRIER that waits for them.
    package var isQuiescent: Bool {
        if let b = barrierIndex, table.records[b].phase == .waitingForBarrier { return counters.inFlight == 1 }
        return counters.inFlight == 0
    }
    /// Every consumed request has been answered: what detach waits for before unmapping.
    package var isDrained: Bool { counters.inFlight == 0 && counters.held == 0 }

    // MARK: - Attach and detach

    package enum AttachError: Error, Equatable {
        case alreadyAttached
        case ringOrderTooLarge
        /// `req_prod - rsp_prod > ring-entries` at attach (§2.2).
        case ringState
    }

    /// Takes over a prepared ring and serves what is already published (§2.2).
    package func attach(_ newAttachment: consuming RingAttachment) throws(AttachError) {
        guard !isAttached else { throw .alreadyAttached }
        guard newAttachment.pageOrder <= maxRingPageOrder else { throw .ringOrderTooLarge }
        let base = newAttachment.mapping.base
        let newRing = BackendRing(base: base, pageOrder: newAttachment.pageOrder)
        if newRing.header.reqProd &- newRing.header.rspProd > newRing.entries { throw .ringState }
        ring = newRing
        validator = RequestValidator(
            dataPages: UInt32(newAttachment.dataPages), geometry: geometry, readOnly: image.readOnly)
        dataBase = base + (1 << newAttachment.pageOrder) * RingLayout.pageSize
        notifyFD = newAttachment.notify.rawValue
        kickFD = newAttachment.kick.rawValue
        table = RequestTable(capacity: Int(newRing.entries))
        isAttached = true
        attachGeneration &+= 1
        attachment = consume newAttachment
        barrierIndex = nil
        setState(.running)
        service()
    }

    /// Starts a detach or a disconnect: stop consuming, answer held requests ERROR (§2.3). The
    /// caller waits for `isDrained`, then calls `finishDetach`.
    package func beginDetach() {
        guard isAttached, state != .closing else { return }
        setState(.closing)
        failAllHeld()
        service()
    }

    /// Unmaps and closes once nothing is in flight. Returns `req_cons`. Called through
    /// `DiskLoop.finishDetach`, which first takes the kick eventfd out of the epoll set.
    package func finishDetach() -> UInt32 {
        precondition(isDrained, "unmapping with I/O in flight")
        pushResponses()
        let reqCons = ring.reqCons
        table = RequestTable(capacity: 0)
        isAttached = false
        attachment = nil
        ring = .detached
        notifyFD = -1
        kickFD = -1
        barrierIndex = nil
        submitBackoff = false
        setState(.idle)
        return reqCons
    }

    // MARK: - Operator control

    /// Operator pause (§5.3): stop consuming; the caller replies once `isQuiescent`.
    package func pause() {
        if state == .running { enterPause(.operatorRequest) }
    }

    /// Ends a pause (§5.2): resubmit held requests in consumption order, or fail them.
    package func resume(failHeld: Bool) -> (resubmitted: Int, failed: Int) {
        guard state.isPaused else { return (0, 0) }
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
                restart(index)
            }
        }
        service()
        return result
    }

    /// Periodic work (at least once a second): pause timeout and nospace auto-resume (§5.2).
    package func tick(nowNanos: UInt64 = MonotonicClock.nanoseconds()) {
        guard case .paused(let reason) = state, reason != .operatorRequest else { return }
        // Reap first, so the held bytes below include every write that has already failed.
        service()
        guard state == .paused(reason) else { return }
        if policy.pauseTimeoutSeconds > 0, nowNanos &- pauseStartedNanos >= policy.pauseTimeoutSeconds * 1_000_000_000 {
            failAllHeld()
            pauseFreeBytes = nil
            setState(.running)
            service()
            return
        }
        // Writes in flight when the pause began go on failing and give back what ext4 had
        // reserved for them, so free space rises by up to their size without anyone adding any.
        // They are held, so waiting for room for the held writes on top of the sample tells that
        // apart from space an operator made, without depending on when their failures are reaped
        // (a sample raised at each failure stuck when one was reaped after the operator freed space).
        if reason == .nospace, let before = pauseFreeBytes, let now = image.filesystemSpace(),
            now.freeBytes > before &+ heldWriteBytes()
        {
            _ = resume(failHeld: false)
        }
    }

    /// Bytes the held writes need (their data; FLUSH and BARRIER are never held).
    private func heldWriteBytes() -> UInt64 {
        guard isAttached, counters.held > 0 else { return 0 }
        var bytes: UInt64 = 0
        for i in 0..<table.capacity where table.records[i].phase == .held && table.records[i].operation == .write {
            bytes &+= UInt64(table.records[i].dataBytes)
        }
        return bytes
    }

    // MARK: - Servicing (the event loop calls this after every wakeup)

    /// Rounds of reap → consume → submit → push in one `service()` before it yields to the
    /// event loop, so control sockets and signals are not starved by a busy frontend. Tests lower
    /// it to reach the yield path often (the daemon: `TAPDISK_ROUNDS_PER_SERVICE`, debug builds).
    @exclusivity(unchecked) package var roundsPerService = 64

    /// `service()` stopped with work left (the round limit, or `io_submit` said EAGAIN): the event
    /// loop must call it again without sleeping (after at most 1 ms for EAGAIN).
    @exclusivity(unchecked) package private(set) var needsService = false
    /// How often `service` stopped at `roundsPerService` with requests still arriving (tests
    /// use it to prove they reached that path).
    @exclusivity(unchecked) package private(set) var roundLimitYields: UInt64 = 0

    /// Resets the completion eventfd after epoll reported it; `service` then reaps.
    @inline(__always)
    package func drainCompletionSignal() { aio.eventFD.drain() }

    /// Resets the kick eventfd after epoll reported it; `service` then consumes.
    @inline(__always)
    package func drainKickSignal() {
        if kickFD >= 0 { _ = clibaio_eventfd_drain(kickFD, &drainedValue) }
    }

    @exclusivity(unchecked) private var drainedValue: UInt64 = 0

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
        for _ in 0..<roundsPerService {
            reapCompletions()
            startBarrierIfReady()
            if canConsume {
                consumeRequests()
                startBarrierIfReady()
            }
            submitQueued()
            pushResponses()
            if submitBackoff {
                needsService = true
                return true
            }
            guard canConsume && (armRing ? ring.finalCheckForRequests() : ring.hasUnconsumedRequests) else {
                needsService = false
                return false
            }
        }
        roundLimitYields &+= 1
        needsService = true
        return true
    }

    private var canConsume: Bool { state == .running && barrierIndex == nil }

    // MARK: - Polling (see DiskLoop.step)

    /// Work that `service` would find now, seen without a syscall: completions in the kernel's
    /// mapped ring, or requests on the blkif ring.
    @inline(__always)
    package var hasVisibleWork: Bool {
        isAttached && (aio.hasCompletions || (canConsume && ring.hasUnconsumedRequests))
    }

    /// Completions can be seen without a syscall, so polling for them is worth it.
    package var canPollCompletions: Bool { aio.userReap }

    /// Before the loop sleeps after polling: arm `req_event` and re-check (Xen's final check),
    /// and reset the completion eventfd that polling left set (what polling already reaped made
    /// it readable). True when work arrived meanwhile and the loop must not sleep.
    package func prepareToSleep() -> Bool {
        guard isAttached else { return false }
        if aio.userReap { aio.eventFD.drain() }
        let requests = canConsume && ring.finalCheckForRequests()
        return requests || aio.hasCompletions
    }

    @inline(__always)
    private func noteLatency(_ nanos: UInt64) {
        let current = completionLatencyNanos
        if current == 0 {
            completionLatencyNanos = nanos
        } else if nanos >= current {
            completionLatencyNanos = current + (nanos - current) / 8
        } else {
            completionLatencyNanos = current - (current - nanos) / 8
        }
    }

    // MARK: - Consuming

    private func consumeRequests() {
        let pending: UInt32
        switch ring.pendingRequests() {
        case .violation(let reqProd):
            halt(
                "req_prod \(reqProd) is impossible: req_cons \(ring.reqCons), rsp_prod \(ring.rspProdPvt), ring-entries \(ring.entries)"
            )
            return
        case .requests(let n):
            pending = n
        }
        if pending > 0 { lastConsumeNanos = MonotonicClock.nanoseconds() }
        var request = clibaio_blkif_request()
        var remaining = pending
        while remaining > 0 && canConsume {
            remaining -= 1
            ring.consume(into: &request)
            start(request)
            // Submit while consuming: the first I/O of a burst reaches the disk without waiting
            // for the whole burst to be parsed, so the device is never idle while we are busy.
            if table.queueCount >= Self.submitBatch && !submitBackoff { submitQueued() }
        }
    }

    /// iocbs per `io_submit` while a burst is being consumed (the rest goes at the end of the
    /// round). Small enough that the first request is on the disk after a few µs.
    static let submitBatch = 8

    private func start(_ request: clibaio_blkif_request) {
        let accepted: RequestValidator.Accepted
        // INDIRECT (§3.4) is validated over a private copy of its descriptors, which becomes the
        // record's segments below, and is answered with its indirect_op, valid or not (§3.3).
        let isIndirect = request.operation == BlkifOperation.indirect.rawValue
        let responseOperation =
            isIndirect ? RequestValidator.indirectResponseOperation(request) : request.operation
        let outcome =
            isIndirect
            ? validator.validateIndirect(request, dataBase: dataBase, descriptors: table.indirectDescriptors)
            : validator.validate(request)
        switch outcome {
        case .reject(let rejection):
            if rejection.status == .notSupported {
                counters.unsupportedRequests += 1
            } else {
                counters.invalidRequests += 1
            }
            counters.rejections[rejection] += 1
            answer(id: request.id, operation: responseOperation, status: rejection.status)
            return
        case .accept(let a):
            accepted = a
        }
        switch accepted.operation {
        case .read: counters.readRequests += 1
        case .write: counters.writeRequests += 1
        case .flushDiskCache: counters.flushRequests += 1
        case .writeBarrier: counters.barrierRequests += 1
        case .discard: counters.discardRequests += 1
        case .indirect: break
        }
        if accepted.operation == .discard && accepted.discardSectors == 0 {
            answer(id: request.id, operation: request.operation, status: .okay)
            return
        }
        if accepted.operation == .flushDiskCache && syncFailed {
            refuseAfterFailedSync(
                id: request.id, operation: request.operation,
                sector: accepted.dataSectors > 0 ? request.sector_number : 0)
            return
        }
        // The ring check bounds outstanding requests by the table size, so this cannot fail for
        // a well-formed ring; a record shortage is answered rather than dropped regardless.
        guard let index = table.allocate() else {
            answer(id: request.id, operation: responseOperation, status: .error)
            return
        }
        counters.inFlight += 1
        let records = table.records
        let segmentCount =
            isIndirect ? RequestValidator.indirectSegmentCount(request) : Int(request.nr_segments)
        records[index] = RequestRecord(
            id: request.id, operationByte: responseOperation, operation: accepted.operation,
            sector: request.sector_number, segmentCount: segmentCount,
            dataBytes: Int(accepted.dataSectors) * RingLayout.sectorSize,
            discardSectors: accepted.discardSectors, sequence: nextSequence, phase: .queued, stage: .data,
            transferred: 0)
        nextSequence &+= 1
        if isIndirect {
            (table.segments + index * RequestTable.segmentsPerRequest).update(
                from: table.indirectDescriptors, count: segmentCount)
        } else if accepted.operation != .discard {
            withUnsafeBytes(of: request.seg) { raw in
                let src = raw.bindMemory(to: clibaio_blkif_segment.self)
                let dst = table.segments + index * RequestTable.segmentsPerRequest
                for i in 0..<Int(request.nr_segments) { dst[i] = src[i] }
            }
        }
        switch accepted.operation {
        case .writeBarrier:
            records[index].phase = .waitingForBarrier
            barrierIndex = index
        default:
            restart(index)
        }
    }

    /// (Re)starts a request from its first stage: initial submission and resume after a hold.
    private func restart(_ index: Int) {
        let r = table.records + index
        r.pointee.transferred = 0
        // A held request resubmitted after the image shrank was validated against the old size:
        // answer it ERROR rather than let the write extend the file again.
        let sectors =
            r.pointee.operation == .discard ? UInt64(r.pointee.discardSectors) : UInt64(r.pointee.dataBytes / 512)
        if sectors > 0 && (r.pointee.sector > geometry.sectors || sectors > geometry.sectors - r.pointee.sector) {
            finish(index, .error)
            return
        }
        switch r.pointee.operation {
        case .read, .write:
            r.pointee.stage = .data
            prepareData(index)
        case .flushDiskCache:
            r.pointee.stage = .sync
            prepareSync(index)
        case .writeBarrier:
            if syncFailed {
                refuseAfterFailedSync(index)
                return
            }
            r.pointee.stage = r.pointee.dataBytes > 0 ? .data : .sync
            if r.pointee.stage == .data { prepareData(index) } else { prepareSync(index) }
        case .discard:
            discard(index)
        case .indirect:
            preconditionFailure("an INDIRECT record carries its indirect_op")
        }
    }

    private func startBarrierIfReady() {
        guard let index = barrierIndex, table.records[index].phase == .waitingForBarrier,
            counters.inFlight == 1, counters.held == 0
        else { return }
        restart(index)
    }

    // MARK: - Building iocbs (zero copy: iovecs point into the frontend's data pages)

    /// Prepares the data iocb for the untransferred remainder of a request and queues it.
    private func prepareData(_ index: Int) {
        let r = table.records[index]
        let segs = table.segments + index * RequestTable.segmentsPerRequest
        let iov = table.iovecs + index * RequestTable.segmentsPerRequest
        var skip = r.transferred
        var count = 0
        for i in 0..<r.segmentCount {
            let s = segs[i]
            var offset = Int(s.gref) * RingLayout.pageSize + Int(s.first_sect) * RingLayout.sectorSize
            var length = Int(s.last_sect - s.first_sect + 1) * RingLayout.sectorSize
            if skip >= length {
                skip -= length
                continue
            }
            offset += skip
            length -= skip
            skip = 0
            iov[count] = iovec(iov_base: dataBase + offset, iov_len: length)
            count += 1
        }
        let fileOffset = Int64(r.sector) * 512 + Int64(r.transferred)
        let cb = table.iocbs + index
        if r.operation == .read {
            clibaio_prep_preadv(
                cb, image.fd.rawValue, iov, Int32(count), fileOffset, aio.eventFD.rawValue, UInt64(index))
        } else {
            clibaio_prep_pwritev(
                cb, image.fd.rawValue, iov, Int32(count), fileOffset, aio.eventFD.rawValue, UInt64(index))
        }
        table.enqueue(index)
    }

    private func prepareSync(_ index: Int) {
        clibaio_prep_fdsync(table.iocbs + index, image.fd.rawValue, aio.eventFD.rawValue, UInt64(index))
        table.enqueue(index)
    }

    // MARK: - Submitting

    /// Batched `io_submit` of the queue. Survives partial acceptance (the accepted prefix leaves
    /// the queue, the rest stays in order) and EAGAIN (retry later); any other error belongs to the
    /// first iocb, which fails alone. Never loses or duplicates an iocb.
    private func submitQueued() {
        submitBackoff = false
        var attempts = 0
        while table.queueCount > 0 && attempts < 1024 {
            attempts += 1
            let n = table.fillBatch(max: table.queueCount)
            let rc = aio.submit(table.submitBatch, count: n)
            if rc > 0 {
                let now = MonotonicClock.nanoseconds()
                for i in 0..<Int(rc) {
                    let index = table.queued(at: i)
                    table.records[index].phase = .submitted
                    submittedAt[index] = now
                }
                table.dequeue(Int(rc))
            } else if rc == 0 || rc == -EAGAIN {
                submitBackoff = true
                return
            } else {
                let index = table.queued(at: 0)
                table.dequeue(1)
                table.records[index].phase = .submitted
                complete(index, result: Int64(rc))
            }
        }
    }

    // MARK: - Completing

    private func reapCompletions() {
        let events = table.events
        var rounds = 0
        while rounds < 1024 {
            rounds += 1
            let n = aio.reap(into: events, max: table.eventCapacity)
            guard n > 0 else { return }
            let now = MonotonicClock.nanoseconds()
            for i in 0..<Int(n) {
                let index = Int(truncatingIfNeeded: clibaio_event_data(events + i))
                guard index >= 0, index < table.capacity, table.records[index].phase == .submitted else { continue }
                noteLatency(now &- submittedAt[index])
                complete(index, result: clibaio_event_res(events + i))
            }
            // Answer as soon as reaped: the frontend can refill while this round goes on.
            pushResponses()
            if Int(n) < table.eventCapacity { return }
        }
    }

    /// One kernel result for one iocb. `result` is bytes transferred or `-errno`.
    private func complete(_ index: Int, result: Int64) {
        let r = table.records + index
        if r.pointee.stage == .sync {
            if result < 0 {
                syncFailure(index, Errno(rawValue: Int32(truncatingIfNeeded: -result)))
            } else {
                syncDone(index)
            }
            return
        }
        if result < 0 {
            failed(index, Errno(rawValue: Int32(truncatingIfNeeded: -result)))
            return
        }
        let remaining = r.pointee.dataBytes - r.pointee.transferred
        if result == 0 || result > Int64(remaining) {
            // Zero bytes cannot make progress; more than asked for cannot be trusted.
            failed(index, Errno(rawValue: EIO))
            return
        }
        r.pointee.transferred += Int(result)
        if r.pointee.transferred < r.pointee.dataBytes {
            counters.shortCompletions += 1
            prepareData(index)
            return
        }
        dataDone(index)
    }

    private func dataDone(_ index: Int) {
        let r = table.records + index
        if r.pointee.operation == .read {
            counters.readBytes += UInt64(r.pointee.dataBytes)
        } else {
            counters.writeBytes += UInt64(r.pointee.dataBytes)
        }
        switch r.pointee.operation {
        case .writeBarrier:
            r.pointee.stage = .sync
            r.pointee.transferred = 0
            prepareSync(index)
        default:
            finish(index, .okay)
        }
    }

    private func syncDone(_ index: Int) {
        let r = table.records + index
        if r.pointee.operation == .flushDiskCache && r.pointee.dataBytes > 0 {
            // The pre-flush write (Linux blkback order): sync first, then the data.
            r.pointee.stage = .data
            r.pointee.transferred = 0
            prepareData(index)
            return
        }
        finish(index, .okay)
    }

    private func syncFailure(_ index: Int, _ errno: Errno) {
        syncFailed = true
        ioStatus = .failed
        counters.flushErrors += 1
        if errno.isNoSpace { counters.nospaceErrors += 1 }
        let r = table.records[index]
        onEvent(.ioError(operation: "flush", errno: errno, action: .report, sector: r.dataBytes > 0 ? r.sector : 0))
        finish(index, .error)
    }

    /// A FLUSH or BARRIER after a failed sync: nothing can make it true any more (§4.3).
    private func refuseAfterFailedSync(id: UInt64, operation: UInt8, sector: UInt64) {
        counters.flushErrors += 1
        onEvent(.ioError(operation: "flush", errno: Errno(rawValue: EIO), action: .report, sector: sector))
        answer(id: id, operation: operation, status: .error)
    }

    private func refuseAfterFailedSync(_ index: Int) {
        counters.flushErrors += 1
        let r = table.records[index]
        onEvent(
            .ioError(
                operation: "flush", errno: Errno(rawValue: EIO), action: .report, sector: r.dataBytes > 0 ? r.sector : 0
            ))
        finish(index, .error)
    }

    /// The single decision point for a failed data transfer: count it, raise `io-error`, then
    /// answer ERROR (`report`) or hold the request and pause (`pause`, §5.2). A FLUSH or BARRIER
    /// whose data failed is always answered: the policies govern READ/WRITE/DISCARD only.
    private func failed(_ index: Int, _ errno: Errno) {
        let r = table.records + index
        switch r.pointee.operation {
        case .read: counters.readErrors += 1
        case .discard: counters.discardErrors += 1
        default: counters.writeErrors += 1
        }
        if errno.isNoSpace { counters.nospaceErrors += 1 }
        ioStatus = syncFailed || !errno.isNoSpace ? .failed : .nospace
        let op = r.pointee.operation
        let policyApplies = op == .read || op == .write || op == .discard
        let canHold = state == .running || state.isPaused
        let action: FailureAction = policyApplies && canHold ? policy.action(for: errno) : .report
        onEvent(.ioError(operation: op.eventName, errno: errno, action: action, sector: r.pointee.sector))
        if action == .pause {
            r.pointee.phase = .held
            counters.inFlight -= 1
            counters.held += 1
            if state == .running { enterPause(errno.isNoSpace ? .nospace : .ioError) }
        } else {
            finish(index, .error)
        }
    }

    // MARK: - DISCARD

    private func discard(_ index: Int) {
        let r = table.records[index]
        let offset = Int64(r.sector) * 512
        let length = Int64(r.discardSectors) * 512
        var error: Errno? = nil
        #if TAPDISK_FAULT_INJECTION
            if let injected = aio.faults.interceptDiscard() {
                error = Errno(rawValue: injected)
            } else {
                error = image.punchHole(offset: offset, length: length)
            }
        #else
            error = image.punchHole(offset: offset, length: length)
        #endif
        table.records[index].phase = .submitted
        guard let error else {
            counters.discardBytes += UInt64(length)
            finish(index, .okay)
            return
        }
        if error.rawValue == EOPNOTSUPP {
            finish(index, .notSupported)
        } else {
            failed(index, error)
        }
    }

    // MARK: - Answering: the response builder

    /// Answers a record and frees it.
    private func finish(_ index: Int, _ status: BlkifStatus) {
        let r = table.records + index
        if r.pointee.phase == .held {
            counters.held -= 1
        } else {
            counters.inFlight -= 1
        }
        if barrierIndex == index { barrierIndex = nil }
        answer(id: r.pointee.id, operation: r.pointee.operationByte, status: status)
        table.release(index)
    }

    /// The only code that writes a response slot. Exactly one call per consumed request.
    @inline(__always)
    private func answer(id: UInt64, operation: UInt8, status: BlkifStatus) {
        switch status {
        case .okay: counters.responsesOkay += 1
        case .error: counters.responsesError += 1
        case .notSupported: counters.responsesNotSupported += 1
        }
        ring.writeResponse(id: id, operation: operation, status: status)
    }

    private func pushResponses() {
        if ring.pushResponses(), notifyFD >= 0 {
            _ = clibaio_eventfd_signal(notifyFD)
        }
    }

    // MARK: - States

    private func setState(_ new: DiskState) {
        guard new != state else { return }
        state = new
        onEvent(.stateChanged(new))
    }

    private func enterPause(_ reason: PauseReason) {
        pauseStartedNanos = MonotonicClock.nanoseconds()
        pauseFreeBytes = reason == .nospace ? image.filesystemSpace()?.freeBytes : nil
        setState(.paused(reason))
    }

    private func halt(_ message: String) {
        guard state != .halted else { return }
        state = .halted
        onEvent(.frontendViolation(message))
        onEvent(.stateChanged(.halted))
    }

    /// Answers every held request ERROR without a new attempt (counts only in responses-error).
    @discardableResult
    private func failAllHeld() -> Int {
        let held = heldInConsumptionOrder()
        for index in held { finish(index, .error) }
        return held.count
    }

    private func heldInConsumptionOrder() -> [Int] {
        guard isAttached, counters.held > 0 else { return [] }
        let records = table.records
        var held: [Int] = []
        for i in 0..<table.capacity where records[i].phase == .held { held.append(i) }
        return held.sorted { records[$0].sequence < records[$1].sequence }
    }
}

extension BackendRing {
    /// A placeholder while nothing is attached; never read because `table` is nil then.
    static var detached: BackendRing {
        BackendRing(base: detachedHeader, pageOrder: 0)
    }
}

/// Sixteen zero bytes standing in for a ring header while detached.
private nonisolated(unsafe) let detachedHeader: UnsafeMutableRawPointer = {
    let p = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
    p.initializeMemory(as: UInt8.self, repeating: 0, count: 64)
    return p
}()
