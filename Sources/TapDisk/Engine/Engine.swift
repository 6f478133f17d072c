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
    @exclusivity(unchecked) package internal(set) var state: DiskState = .idle
    @exclusivity(unchecked) package internal(set) var ioStatus: IOStatus = .ok
    /// A sync failed once: the kernel reports a writeback error to an fd only once, so no later
    /// FLUSH can prove anything (§5.3). Only a restart clears it.
    @exclusivity(unchecked) package internal(set) var syncFailed = false
    @exclusivity(unchecked) package internal(set) var counters = Counters()
    /// Receives state changes and failures; never called for successful requests.
    package var onEvent: (EngineEvent) -> Void = { _ in }

    @exclusivity(unchecked) var aio: AIOContext
    var attachment: RingAttachment? = nil
    @exclusivity(unchecked) var table = RequestTable(capacity: 0)
    @exclusivity(unchecked) package internal(set) var isAttached = false
    @exclusivity(unchecked) var ring = BackendRing.detached
    /// Internal (not private) so `Engine+Resize.swift` can bound it by a new size.
    @exclusivity(unchecked) var validator = RequestValidator(
        dataPages: 0, sectors: 0, blockSectors: 1, readOnly: true, discardSupported: false)
    @exclusivity(unchecked) var dataBase = UnsafeMutableRawPointer(bitPattern: 0x1000)!
    @exclusivity(unchecked) var notifyFD: Int32 = -1
    @exclusivity(unchecked) package internal(set) var kickFD: Int32 = -1
    /// Counts attaches, so the event loop can tell a new kick eventfd from an old one that had
    /// the same fd number (closed on detach, reused by the next attach).
    @exclusivity(unchecked) package internal(set) var attachGeneration: UInt64 = 0
    @exclusivity(unchecked) var nextSequence: UInt64 = 0
    /// When each table index was last handed to `io_submit` (the completion latency estimate).
    @exclusivity(unchecked) var submittedAt: UnsafeMutablePointer<UInt64>
    /// Smoothed submit→completion latency (EWMA, 1/8), for the polling window.
    @exclusivity(unchecked) package internal(set) var completionLatencyNanos: UInt64 = 0
    /// Index of the BARRIER that stops consumption until it is answered.
    @exclusivity(unchecked) var barrierIndex: Int? = nil
    /// Submission hit EAGAIN: retry after completions or a short sleep.
    @exclusivity(unchecked) package internal(set) var submitBackoff = false
    /// The disk as served now: the image's geometry at open, with `sectors` updated by
    /// `updateGeometry(sectors:)` when the image is resized underneath (Engine+Resize.swift).
    package internal(set) var geometry: ImageGeometry
    /// When the current nospace/io-error pause began, and the free space then (auto-resume).
    var pauseStartedNanos: UInt64 = 0
    var pauseFreeBytes: UInt64? = nil
    /// An operator `pause` arrived during a `nospace`/`io-error` pause: only `resume` ends it.
    var operatorHold = false

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

    // MARK: - Servicing (the event loop calls this after every wakeup)

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
    #if DEBUG
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
        for _ in 0..<roundsPerService {
            reapCompletions()
            startBarrierIfReady()
            if canConsume {
                consumeRequests()
                startBarrierIfReady()
            }
            submitQueued()
            pushResponses()
            #if DEBUG
                afterRoundForTesting?()
            #endif
            if submitBackoff {
                needsService = true
                return true
            }
            // A BARRIER whose last predecessor was answered in this round (a request that
            // `io_submit` itself refused is answered inside `submitQueued`) needs another round:
            // nothing in the kernel would wake the loop for it.
            if barrierIsStartable { continue }
            guard canConsume && (armRing ? ring.finalCheckForRequests() : ring.hasUnconsumedRequests) else {
                needsService = false
                return false
            }
        }
        roundLimitYields &+= 1
        needsService = true
        return true
    }

    var canConsume: Bool { state == .running && barrierIndex == nil }

    // MARK: - Consuming

    func consumeRequests() {
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

    func start(_ request: clibaio_blkif_request) {
        let accepted: RequestValidator.Accepted
        // INDIRECT (§4.1) is validated over a private copy of its descriptors, which becomes the
        // record's segments below, and is answered with its indirect_op, valid or not (§4.1).
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
            startFromFirstStage(index)
        }
    }

    /// Starts a request from its first stage: its first submission, and again on resume after a
    /// hold (everything it had done is redone).
    func startFromFirstStage(_ index: Int) {
        let record = table.records + index
        record.pointee.transferred = 0
        // A held request resubmitted after the image shrank was validated against the old size:
        // answer it ERROR rather than let the write extend the file again.
        let sectors =
            record.pointee.operation == .discard
            ? UInt64(record.pointee.discardSectors) : UInt64(record.pointee.dataBytes / 512)
        if sectors > 0
            && (record.pointee.sector > geometry.sectors || sectors > geometry.sectors - record.pointee.sector)
        {
            finish(index, .error)
            return
        }
        switch record.pointee.operation {
        case .read, .write:
            record.pointee.stage = .data
            prepareData(index)
        case .flushDiskCache:
            if syncFailed {
                refuseAfterFailedSync(index)
                return
            }
            record.pointee.stage = .sync
            prepareSync(index)
        case .writeBarrier:
            if syncFailed {
                refuseAfterFailedSync(index)
                return
            }
            record.pointee.stage = record.pointee.dataBytes > 0 ? .data : .sync
            if record.pointee.stage == .data { prepareData(index) } else { prepareSync(index) }
        case .discard:
            discard(index)
        case .indirect:
            preconditionFailure("an INDIRECT record carries its indirect_op")
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

    /// Answers a record and frees it.
    func finish(_ index: Int, _ status: BlkifStatus) {
        let record = table.records + index
        if record.pointee.phase == .held {
            counters.held -= 1
        } else {
            counters.inFlight -= 1
        }
        if barrierIndex == index { barrierIndex = nil }
        answer(id: record.pointee.id, operation: record.pointee.operationByte, status: status)
        table.release(index)
    }

    /// The only code that writes a response slot. Exactly one call per consumed request.
    @inline(__always)
    func answer(id: UInt64, operation: UInt8, status: BlkifStatus) {
        switch status {
        case .okay: counters.responsesOkay += 1
        case .error: counters.responsesError += 1
        case .notSupported: counters.responsesNotSupported += 1
        }
        ring.writeResponse(id: id, operation: operation, status: status)
    }

    func pushResponses() {
        if ring.pushResponses(), notifyFD >= 0 {
            _ = clibaio_eventfd_signal(notifyFD)
        }
    }

}
