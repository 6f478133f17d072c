import CLibAIO
import Glibc

/// From a started request to its kernel result: iocbs built over the frontend's pages (zero copy),
/// batched `io_submit`, reaping, short-completion resubmission, multi-stage FLUSH/BARRIER, and
/// `applyFailurePolicy`, the one place a failed transfer is answered or held.
extension Engine {
    /// Prepares the data iocb for the untransferred remainder of a request and queues it.
    func prepareData(_ index: Int) {
        let r = table.records[index]
        if r.bounced {
            bounceTransfer(index)
            return
        }
        let sources = table.sources + index * RequestTable.segmentsPerRequest
        let iov = table.iovecs + index * RequestTable.segmentsPerRequest
        var skip = r.transferred
        var count = 0
        for i in 0..<r.segmentCount {
            let s = sources[i]
            if skip >= s.iov_len {
                skip -= s.iov_len
                continue
            }
            iov[count] = iovec(iov_base: s.iov_base! + skip, iov_len: s.iov_len - skip)
            skip = 0
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

    func prepareSync(_ index: Int) {
        clibaio_prep_fdsync(table.iocbs + index, image.fd.rawValue, aio.eventFD.rawValue, UInt64(index))
        table.enqueue(index)
    }

    /// Batched `io_submit` of the queue. Survives partial acceptance (the accepted prefix leaves
    /// the queue, the rest stays in order) and EAGAIN (retry later); any other error belongs to the
    /// first iocb, which fails alone. Never loses or duplicates an iocb.
    func submitQueued() {
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
        // Out of attempts with iocbs still queued: come back for them (as after EAGAIN) rather
        // than leave them to a completion that may never come.
        if table.queueCount > 0 { submitBackoff = true }
    }

    func reapCompletions() {
        let events = table.events
        var rounds = 0
        while rounds < 1024 {
            rounds += 1
            let n = aio.reap(into: events, max: table.eventCapacity)
            guard n > 0 else { return }
            let now = MonotonicClock.nanoseconds()
            reapedAt = now
            for i in 0..<Int(n) {
                let index = Int(truncatingIfNeeded: clibaio_event_data(events + i))
                guard index >= 0, index < table.capacity, table.records[index].phase == .submitted else { continue }
                noteLatency(now &- submittedAt[index])
                complete(index, result: clibaio_event_res(events + i))
            }
            reapedAt = 0
            // Answer as soon as reaped: the frontend can refill while this round goes on.
            pushResponses()
            if Int(n) < table.eventCapacity { return }
        }
    }

    /// One kernel result for one iocb. `result` is bytes transferred or `-errno`.
    func complete(_ index: Int, result: Int64) {
        let record = table.records + index
        if record.pointee.stage == .sync {
            if result < 0 {
                syncFailure(index, Errno(rawValue: Int32(truncatingIfNeeded: -result)))
            } else {
                syncDone(index)
            }
            return
        }
        if result < 0 {
            applyFailurePolicy(index, Errno(rawValue: Int32(truncatingIfNeeded: -result)))
            return
        }
        let remaining = record.pointee.dataBytes - record.pointee.transferred
        if result == 0 || result > Int64(remaining) {
            // Zero bytes cannot make progress; more than asked for cannot be trusted.
            applyFailurePolicy(index, Errno(rawValue: EIO))
            return
        }
        record.pointee.transferred += Int(result)
        if record.pointee.transferred < record.pointee.dataBytes {
            counters.shortCompletions += 1
            prepareData(index)
            return
        }
        dataDone(index)
    }

    func dataDone(_ index: Int) {
        let record = table.records + index
        if record.pointee.operation == .read {
            counters.readBytes += UInt64(record.pointee.dataBytes)
        } else {
            counters.writeBytes += UInt64(record.pointee.dataBytes)
        }
        switch record.pointee.operation {
        case .barrier:
            record.pointee.stage = .sync
            record.pointee.transferred = 0
            prepareSync(index)
        default:
            finish(index, .ok)
        }
    }

    func syncDone(_ index: Int) {
        let record = table.records + index
        if record.pointee.operation == .flush && record.pointee.dataBytes > 0 {
            // The pre-flush write (Linux blkback order): sync first, then the data.
            record.pointee.stage = .data
            record.pointee.transferred = 0
            prepareData(index)
            return
        }
        finish(index, .ok)
    }

    func syncFailure(_ index: Int, _ errno: Errno) {
        syncFailed = true
        ioStatus = .failed
        counters.flushErrors += 1
        counters.errnoErrors[errno] += 1
        if errno.isNoSpace { counters.nospaceErrors += 1 }
        let r = table.records[index]
        onEvent(.ioError(operation: "flush", errno: errno, action: .report, sector: r.dataBytes > 0 ? r.sector : 0))
        finish(index, .error(errno.rawValue))
    }

    /// A FLUSH or BARRIER after a failed sync: nothing can make it true any more (§5.3).
    func refuseAfterFailedSync(_ index: Int) {
        counters.flushErrors += 1
        counters.errnoErrors[Errno(rawValue: EIO)] += 1
        let r = table.records[index]
        onEvent(
            .ioError(
                operation: "flush", errno: Errno(rawValue: EIO), action: .report, sector: r.dataBytes > 0 ? r.sector : 0
            ))
        finish(index, .error(EIO))
    }

    /// The single decision point for a failed data transfer: count it, raise `io-error`, then
    /// answer ERROR (`report`) or hold the request and pause (`pause`, §6.2). A FLUSH or BARRIER
    /// whose data failed is always answered: the policies govern READ/WRITE/DISCARD only.
    func applyFailurePolicy(_ index: Int, _ errno: Errno) {
        let record = table.records + index
        switch record.pointee.operation {
        case .read: counters.readErrors += 1
        case .discard, .writeZeroes: counters.discardErrors += 1
        default: counters.writeErrors += 1
        }
        counters.errnoErrors[errno] += 1
        if errno.isNoSpace { counters.nospaceErrors += 1 }
        ioStatus = syncFailed || !errno.isNoSpace ? .failed : .nospace
        let op = record.pointee.operation
        let policyApplies = op == .read || op == .write || op.isRangeOperation
        // Not while the front is stopped for a vhost-user message that waits for the drain: QEMU
        // blocks until that message is answered, so nothing may be held then.
        let canHold = (state == .running || state.isPaused) && !frontStopped
        let action: FailureAction = policyApplies && canHold ? policy.action(for: errno) : .report
        onEvent(.ioError(operation: op.eventName, errno: errno, action: action, sector: record.pointee.sector))
        if action == .pause {
            record.pointee.phase = .held
            record.pointee.heldErrno = errno.rawValue
            counters.inFlight -= 1
            counters.held += 1
            if state == .running {
                enterPause(errno.isNoSpace ? .nospace : .ioError)
            } else if state == .paused(.nospace), errno.isNoSpace, let free = image.filesystemSpace()?.freeBytes {
                // Out of space again after the pause began: what is free now bounds the baseline.
                lowerPauseBaseline(to: free)
            }
        } else {
            finish(index, .error(errno.rawValue))
        }
    }

    /// DISCARD and WRITE_ZEROES: one synchronous fallocate (punch, or zero range keeping the
    /// blocks allocated), answered in the same round.
    func discard(_ index: Int) {
        let r = table.records[index]
        let offset = Int64(r.sector) * 512
        let length = Int64(r.rangeSectors) * 512
        let zero = r.operation == .writeZeroes
        #if TAPDISK_FAULT_INJECTION
            let injected = aio.faults.interceptDiscard()
        #else
            let injected: Int32? = nil
        #endif
        let error: Errno? =
            if let injected { Errno(rawValue: injected) } else if zero {
                image.zeroRange(offset: offset, length: length)
            } else {
                image.punchHole(offset: offset, length: length)
            }
        table.records[index].phase = .submitted
        guard let error else {
            counters.discardBytes += UInt64(length)
            finish(index, .ok)
            return
        }
        if error.rawValue == EOPNOTSUPP {
            finish(index, .notSupported)
        } else {
            applyFailurePolicy(index, error)
        }
    }
}
