import CLibAIO
import Glibc

/// The virtqueue front: where a descriptor chain becomes a request record, and where a record's
/// answer becomes a status byte and a used-ring entry. `SplitVirtqueue.pop` copies each
/// descriptor once, checks every address against guest memory and bounds the chain; the chain's
/// data iovecs land directly in the record's source slot (zero copy to `preadv`/`pwritev`), and
/// `VirtioBlkRequest.classify` judges the copied header against the disk.
///
/// Every popped head gets exactly one used entry: malformed and rejected chains here, at once;
/// everything else through `finish`, whose `Completion` becomes a status byte (the errno is
/// counted, not sent). Its state is `Engine.virtio` (VirtioFront.swift).
extension Engine {
    /// A vhost-user front-end connected: its messages go to `handleVhostMessage`, and its
    /// virtqueue is served once the messages have set it up and enabled it.
    package func attachVirtio(_ configuration: VhostUserDeviceConfiguration) throws(AttachError) {
        guard !isAttached else { throw .alreadyAttached }
        virtio.device = VhostUserDevice(configuration: configuration)
        virtio.disk = configuration.disk
        virtio.segments = min(configuration.iovecCapacity, RequestTable.segmentsPerRequest)
        bounceAlignment = image.cache.usesDirectIO ? Int(geometry.sectorSize) : 0
        bounceCapacity = Int(configuration.maxChainBytes)
        table = RequestTable(capacity: Int(configuration.maxQueueSize))
        front = .virtio
        isAttached = true
        kickFD = -1
        attachGeneration &+= 1
        barrierIndex = nil
        frontStopped = false
        virtio.brokenQueueStart = nil
        setState(.running)
    }

    /// The largest queue a vhost-user front-end may set up: one iocb per in-flight chain.
    package var maxVirtqueueSize: UInt32 { RingLayout.entries(pageOrder: maxRingPageOrder) }

    /// Applies one control-plane message and returns its reply bytes (nil: none). The caller has
    /// taken the kick eventfd out of the epoll set (`DiskLoop.releaseKickWatch`): the message may
    /// close it. Services afterwards, because a ring that starts may already hold requests that
    /// no kick will announce.
    package func handleVhostMessage(_ message: consuming VhostUserMessage) throws(VhostUserDeviceError) -> [UInt8]? {
        defer {
            let kick = virtio.device.kickDescriptor ?? -1
            if kick != kickFD {
                kickFD = kick
                attachGeneration &+= 1
            }
            // A ring broken by the guest halted the disk; a ring set up anew (QEMU does so when
            // the guest resets its driver or reboots) is served again, as a blkif frontend is
            // after a new attach.
            if state == .halted, let broken = virtio.brokenQueueStart, virtio.device.queueStarts != broken,
                virtio.device.isRunning
            {
                virtio.brokenQueueStart = nil
                setState(.running)
            }
            service()
        }
        return try virtio.device.handle(message)
    }

    /// Stops taking chains so a message that stops or remaps the ring can wait for the drain
    /// (`VhostUserDevice.mustWaitForDrain`). Held requests are answered IOERR: the front-end is
    /// stopping the queue and waits for every chain it posted (QEMU blocks until it gets
    /// GET_VRING_BASE's reply), so holding them would hang it.
    package func stopFront() {
        frontStopped = true
        failAllHeld()
        service()
    }

    package func restartFront() {
        frontStopped = false
        service()
    }

    func consumeVirtqueue() {
        let capacity = virtio.segments
        // One queue's worth per call at most: the queue size bounds what the guest can post.
        var budget = table.capacity
        while budget > 0 && canConsume {
            budget -= 1
            guard let index = table.allocate() else { return }
            let storage = table.sourceStorage(index, count: capacity)
            switch virtio.device.pop(into: storage) {
            case .empty:
                table.release(index)
                return
            case .broken(let fault):
                table.release(index)
                virtio.brokenQueueStart = virtio.device.queueStarts
                halt("virtqueue: \(fault)")
                return
            case .malformed(let head, _, let status):
                table.release(index)
                counters.invalidRequests += 1
                answerHead(head, .error, statusByte: status, writtenBytes: status == nil ? 0 : 1)
            case .chain(let chain):
                start(chain, index: index, storage: storage)
            }
            if table.queueCount >= Self.submitBatch && !submitBackoff { submitQueued() }
            if bouncedBytesThisService >= Self.bounceBytesPerService { return }
        }
    }

    private func start(_ chain: VirtqueueChain, index: Int, storage: UnsafeMutableBufferPointer<iovec>) {
        let id = UInt64(chain.head)
        let tag = UInt64(UInt(bitPattern: chain.status))
        switch VirtioBlkRequest.classify(chain, storage: storage, disk: virtio.disk) {
        case .reject(let status, _):
            table.release(index)
            if status == .unsupported {
                counters.unsupportedRequests += 1
            } else {
                counters.invalidRequests += 1
            }
            answerHead(
                chain.head, status == .unsupported ? .notSupported : .error, statusByte: chain.status, writtenBytes: 1)
        case .getID(let bytes):
            table.release(index)
            counters.idRequests += 1
            let written = copySerial(
                into: storage, from: chain.readableSegments, count: chain.writableSegments, max: bytes)
            answerHead(chain.head, .ok, statusByte: chain.status, writtenBytes: UInt32(written) + 1)
        case .read(let sector, let bytes), .write(let sector, let bytes):
            let operation: DiskOperation = chain.type == VirtioBlkType.read ? .read : .write
            countRequest(operation)
            begin(
                index,
                RequestRecord(
                    id: id, tag: tag, operation: operation, sector: sector, segmentCount: chain.segmentCount,
                    dataBytes: Int(bytes),
                    bounced: !isAligned(storage, count: chain.segmentCount)))
        case .flush:
            countRequest(.flush)
            begin(index, RequestRecord(id: id, tag: tag, operation: .flush))
        case .discard(let sector, let sectors):
            countRequest(.discard)
            begin(
                index,
                RequestRecord(
                    id: id, tag: tag, operation: .discard, sector: sector, rangeSectors: UInt64(sectors)))
        case .writeZeroes(let sector, let sectors, let unmap):
            countRequest(.writeZeroes)
            begin(
                index,
                RequestRecord(
                    id: id, tag: tag, operation: unmap ? .discard : .writeZeroes, sector: sector,
                    rangeSectors: UInt64(sectors)))
        }
    }

    /// Every iovec's address and length fit `O_DIRECT` (the guest chooses its buffers; virtio
    /// sets no alignment rule, and Linux sends sector-aligned ones, so this is nearly always true).
    @inline(__always)
    private func isAligned(_ storage: UnsafeMutableBufferPointer<iovec>, count: Int) -> Bool {
        guard bounceAlignment > 1 else { return true }
        let mask = UInt(bounceAlignment - 1)
        for i in 0..<count where (UInt(bitPattern: storage[i].iov_base) | UInt(storage[i].iov_len)) & mask != 0 {
            return false
        }
        return true
    }

    /// GET_ID: the serial (at most 20 bytes, as many as the guest's buffer holds) into the
    /// device-writable iovecs. Returns the bytes written.
    private func copySerial(
        into storage: UnsafeMutableBufferPointer<iovec>, from first: Int, count: Int, max: UInt64
    ) -> Int {
        let serial = virtio.device.configuration.serial
        let total = Swift.min(Int(Swift.min(max, UInt64(VirtioBlkType.idBytes))), serial.count)
        var done = 0
        serial.withUnsafeBytes { src in
            for i in first..<(first + count) where done < total {
                guard let base = storage[i].iov_base else { continue }
                let n = Swift.min(storage[i].iov_len, total - done)
                clibaio_shared_copy(base, src.baseAddress! + done, n)
                done += n
            }
        }
        return done
    }

    /// The finish switch's virtio case: the record's head (`id`) and status byte (`tag`, its
    /// address); OK only when every byte moved.
    @inline(__always)
    func answerChain(_ record: RequestRecord, _ completion: Completion) {
        let status = completion.status
        let written: UInt32 = status == .ok && record.operation == .read ? UInt32(record.dataBytes) + 1 : 1
        answerHead(
            UInt16(truncatingIfNeeded: record.id), status,
            statusByte: UnsafeMutablePointer(bitPattern: UInt(truncatingIfNeeded: record.tag)), writtenBytes: written)
    }

    /// The front-has-requests switch's virtio case (with `arm`, the enable-notification re-check).
    @inline(__always)
    func virtqueueHasRequests(arm: Bool) -> Bool {
        arm ? virtio.device.enableNotifications() : virtio.device.hasAvailable
    }

    /// The push switch's virtio case: interrupts the guest if it asked for it.
    @inline(__always)
    func notifyVirtqueue() { virtio.device.notifyIfNeeded() }

    /// The detach switch's virtio case: drops the eventfds, the queue and then guest memory
    /// (nothing points into it now). A virtqueue has no `req_cons` to report: 0.
    func detachVirtqueue() -> UInt32 {
        virtio.device = VhostUserDevice(configuration: virtio.device.configuration)
        return 0
    }

    /// The only code that writes a virtio status byte and a used entry. Exactly one call per
    /// popped head.
    @inline(__always)
    func answerHead(
        _ head: UInt16, _ status: Completion.Status, statusByte: UnsafeMutablePointer<UInt8>?, writtenBytes: UInt32
    ) {
        countResponse(status)
        if let statusByte { VirtioBlkStatus(status).write(to: statusByte) }
        if !virtio.device.complete(head: head, writtenBytes: writtenBytes) {
            // The head was not in flight: an engine bug, never guest input. Stop serving rather
            // than go on with the queue and the records out of step.
            halt("virtqueue: head \(head) answered but not in flight")
        }
    }
}
