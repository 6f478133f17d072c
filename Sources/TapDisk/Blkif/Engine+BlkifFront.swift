import CLibAIO

/// The blkif ring front: where a ring slot becomes a request record, and where a record's answer
/// becomes a response slot. Each slot is copied once (`BackendRing.consume`) and judged on the
/// copy by `RequestValidator`; the I/O core then sees only a `DiskOperation`, a sector and
/// source iovecs into the data pages, and answers with a `Completion`, of which the ring keeps
/// the status (`BlkifStatus`). Its state is `Engine.blkif` (BlkifFront.swift).
extension Engine {
    /// Takes over a prepared ring and serves what is already published (§3).
    package func attach(_ newAttachment: consuming RingAttachment) throws(AttachError) {
        guard !isAttached else { throw .alreadyAttached }
        guard newAttachment.pageOrder <= maxRingPageOrder else { throw .ringOrderTooLarge }
        let base = newAttachment.mapping.base
        let newRing = BackendRing(base: base, pageOrder: newAttachment.pageOrder)
        if newRing.header.reqProd &- newRing.header.rspProd > newRing.entries { throw .ringState }
        blkif.ring = newRing
        blkif.validator = RequestValidator(
            dataPages: UInt32(newAttachment.dataPages), geometry: geometry, readOnly: image.readOnly)
        blkif.dataBase = base + (1 << newAttachment.pageOrder) * RingLayout.pageSize
        blkif.notifyFD = newAttachment.notify.rawValue
        kickFD = newAttachment.kick.rawValue
        table = RequestTable(capacity: Int(newRing.entries))
        front = .blkif
        frontStopped = false
        isAttached = true
        attachGeneration &+= 1
        blkif.attachment = consume newAttachment
        barrierIndex = nil
        setState(.running)
        service()
    }

    package var ringEntries: UInt32 { isAttached ? blkif.ring.entries : 0 }
    package var requestConsumerIndex: UInt32 { blkif.ring.reqCons }

    /// The detach switch's blkif case: drops the ring, the mapping and the eventfds (nothing is
    /// in flight) and returns `req_cons` for the detach reply.
    func detachRing() -> UInt32 {
        let reqCons = blkif.ring.reqCons
        blkif = BlkifFront()
        return reqCons
    }

    func consumeRing() {
        let pending: UInt32
        switch blkif.ring.pendingRequests() {
        case .violation(let reqProd):
            halt(
                "req_prod \(reqProd) is impossible: req_cons \(blkif.ring.reqCons), rsp_prod \(blkif.ring.rspProdPvt), ring-entries \(blkif.ring.entries)"
            )
            return
        case .requests(let n):
            pending = n
        }
        var request = clibaio_blkif_request()
        var remaining = pending
        while remaining > 0 && canConsume {
            remaining -= 1
            blkif.ring.consume(into: &request)
            start(request)
            // Submit while consuming: the first I/O of a burst reaches the disk without waiting
            // for the whole burst to be parsed, so the device is never idle while we are busy.
            if table.queueCount >= Self.submitBatch && !submitBackoff { submitQueued() }
        }
    }

    func start(_ request: clibaio_blkif_request) {
        let accepted: RequestValidator.Accepted
        // INDIRECT (§4.1) is validated over a private copy of its descriptors, which becomes the
        // record's source iovecs below, and is answered with its indirect_op, valid or not (§4.1).
        let isIndirect = request.operation == BlkifOperation.indirect.rawValue
        let responseOperation =
            isIndirect ? RequestValidator.indirectResponseOperation(request) : request.operation
        let outcome =
            isIndirect
            ? blkif.validator.validateIndirect(
                request, dataBase: blkif.dataBase, descriptors: table.indirectDescriptors)
            : blkif.validator.validate(request)
        switch outcome {
        case .reject(let rejection):
            if rejection.status == .notSupported {
                counters.unsupportedRequests += 1
            } else {
                counters.invalidRequests += 1
            }
            counters.rejections[rejection] += 1
            answer(
                id: request.id, operation: responseOperation, rejection.status == .notSupported ? .notSupported : .error
            )
            return
        case .accept(let a):
            accepted = a
        }
        let operation: DiskOperation
        switch accepted.operation {
        case .read: operation = .read
        case .write: operation = .write
        case .flushDiskCache: operation = .flush
        case .writeBarrier: operation = .barrier
        case .discard: operation = .discard
        case .indirect: preconditionFailure("the validator answers with the indirect_op")
        }
        countRequest(operation)
        if accepted.operation == .discard && accepted.discardSectors == 0 {
            answerAtConsumption(operation)
            answer(id: request.id, operation: request.operation, .ok)
            return
        }
        // The ring check bounds outstanding requests by the table size, so this cannot fail for
        // a well-formed ring; a record shortage is answered rather than dropped regardless.
        guard let index = table.allocate() else {
            answerAtConsumption(operation)
            answer(id: request.id, operation: responseOperation, .error)
            return
        }
        let segmentCount =
            isIndirect ? RequestValidator.indirectSegmentCount(request) : Int(request.nr_segments)
        if isIndirect {
            fillSources(index, from: table.indirectDescriptors, count: segmentCount)
        } else if accepted.operation != .discard {
            withUnsafeBytes(of: request.seg) { raw in
                fillSources(
                    index, from: raw.baseAddress!.assumingMemoryBound(to: clibaio_blkif_segment.self),
                    count: segmentCount)
            }
        }
        begin(
            index,
            RequestRecord(
                id: request.id, tag: UInt64(responseOperation), operation: operation, sector: request.sector_number,
                segmentCount: accepted.operation == .discard ? 0 : segmentCount,
                dataBytes: Int(accepted.dataSectors) * RingLayout.sectorSize, rangeSectors: accepted.discardSectors))
    }

    /// Validated segments → addresses in the data pages, once per request (short completions
    /// resume from these).
    @inline(__always)
    private func fillSources(_ index: Int, from segments: UnsafePointer<clibaio_blkif_segment>, count: Int) {
        let dst = table.sources + index * RequestTable.segmentsPerRequest
        for i in 0..<count {
            let s = segments[i]
            dst[i] = iovec(
                iov_base: blkif.dataBase + Int(s.gref) * RingLayout.pageSize + Int(s.first_sect)
                    * RingLayout.sectorSize,
                iov_len: Int(s.last_sect - s.first_sect + 1) * RingLayout.sectorSize)
        }
    }

    /// The finish switch's blkif case: the record's id and echoed operation byte (its `tag`),
    /// and the completion's status; the ring has no room for the errno.
    @inline(__always)
    func answerRing(_ record: RequestRecord, _ completion: Completion) {
        answer(id: record.id, operation: UInt8(truncatingIfNeeded: record.tag), completion.status)
    }

    /// The only code that writes a blkif response slot. Exactly one call per consumed request.
    @inline(__always)
    func answer(id: UInt64, operation: UInt8, _ status: Completion.Status) {
        countResponse(status)
        blkif.ring.writeResponse(id: id, operation: operation, status: BlkifStatus(status))
    }

    /// The front-has-requests switch's blkif case (with `arm`, Xen's final check).
    @inline(__always)
    func ringHasRequests(arm: Bool) -> Bool {
        arm ? blkif.ring.finalCheckForRequests() : blkif.ring.hasUnconsumedRequests
    }

    /// Publishes the responses written so far and kicks the frontend if it asked.
    @inline(__always)
    func pushRing() {
        if blkif.ring.pushResponses(), blkif.notifyFD >= 0 {
            _ = clibaio_eventfd_signal(blkif.notifyFD)
        }
    }
}
