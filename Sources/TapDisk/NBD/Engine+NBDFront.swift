import CLibAIO
import Glibc

/// The NBD front's side of the engine: a request whose header and payload have arrived becomes
/// a record (its data iovecs are the slot's pool chunks, page-aligned, so `O_DIRECT` needs no
/// bounce), and a record's answer goes back to its slot (`NBDTransmission.answer`). The record's
/// `id` is the client's cookie; its `tag` is the slot.
extension Engine {
    /// The first NBD client entered transmission: requests from every connection go into one
    /// request table, as many records as the transmission has slots (plus one: a FUA write's
    /// flush is started while the write's record is being answered).
    package func attachNBD(_ transmission: NBDTransmission) throws(AttachError) {
        guard !isAttached else { throw .alreadyAttached }
        table = RequestTable(capacity: transmission.slotCapacity + 1)
        nbd.transmission = transmission
        front = .nbd
        isAttached = true
        kickFD = -1
        attachGeneration &+= 1
        barrierIndex = nil
        frontStopped = false
        setState(.running)
    }

    /// The transmission this engine serves, if NBD is attached.
    package var nbdTransmission: NBDTransmission? { front == .nbd ? nbd.transmission : nil }

    // MARK: - The core's five calls (EngineFront.swift)

    func consumeNBD() { nbd.transmission?.consume(self) }

    var nbdHasRequests: Bool { nbd.transmission?.hasInput ?? false }

    /// Replies completed in this round leave together, one gathered `writev` per connection.
    func pushNBD() { nbd.transmission?.flushAll() }

    /// The record's `tag` is its slot; the completion's errno becomes the NBD error.
    @inline(__always)
    func answerNBD(_ record: RequestRecord, _ completion: Completion) {
        countResponse(completion.status)
        nbd.transmission?.answer(Int32(truncatingIfNeeded: record.tag), completion, engine: self)
    }

    func detachNBD() -> UInt32 {
        nbd.transmission = nil
        return 0
    }

    /// Starts one request for `slot`. The table has a record for every slot, so this never waits.
    func startNBD(
        slot: Int32, operation: DiskOperation, offset: UInt64, length: UInt32, cookie: UInt64,
        chunks: UnsafeMutablePointer<UInt16>, chunkCount: Int, pool: UnsafeMutableRawPointer
    ) {
        guard let index = table.allocate() else { preconditionFailure("NBD slot without a request record") }
        var record = RequestRecord()
        record.id = cookie
        record.tag = UInt64(slot)
        record.operation = operation
        record.sector = offset / 512
        switch operation {
        case .read, .write:
            let storage = table.sourceStorage(index, count: chunkCount)
            var remaining = Int(length)
            for i in 0..<chunkCount {
                let n = min(remaining, NBDBufferPool.chunkSize)
                storage[i] = iovec(iov_base: pool + Int(chunks[i]) * NBDBufferPool.chunkSize, iov_len: n)
                remaining -= n
            }
            record.segmentCount = chunkCount
            record.dataBytes = Int(length)
        case .discard, .writeZeroes:
            record.rangeSectors = UInt64(length) / 512
        case .flush, .barrier:
            break
        }
        countRequest(operation)
        begin(index, record)
    }
}
