import CLibAIO

/// Per-request state, one entry per request consumed and not yet answered.
struct RequestRecord {
    enum Phase: UInt8 {
        case free
        /// Prepared and waiting in the submission queue for `io_submit`.
        case queued
        /// Accepted by the kernel; its completion has not been reaped.
        case submitted
        /// A BARRIER waiting for everything consumed before it.
        case waitingForBarrier
        /// Failed under the `pause` policy; answered only on resume, fail-held, timeout or detach.
        case held
    }

    enum Stage: UInt8 {
        case data
        case sync
    }

    /// The front's name for the request, echoed in its answer: the blkif id, the virtqueue head,
    /// the NBD cookie. The core never reads it.
    var id: UInt64 = 0
    /// Front-private, never read by the core: what the front needs at `finish` to answer, beyond
    /// `id`. blkif: the operation byte to echo (the `indirect_op` for INDIRECT); virtio: the
    /// address of the chain's status byte in guest memory (0: the chain has none); NBD: its
    /// connection slot and reply flags.
    var tag: UInt64 = 0
    var operation: DiskOperation = .read
    var sector: UInt64 = 0
    /// Data iovecs in `RequestTable.sources` at this record's index.
    var segmentCount: Int = 0
    var dataBytes: Int = 0
    /// DISCARD / WRITE_ZEROES: the sectors of the range.
    var rangeSectors: UInt64 = 0
    /// The data cannot go to `O_DIRECT` as it lies (a guest buffer not aligned to the sector
    /// size): it moves through the engine's bounce buffer instead (Engine+Bounce.swift).
    var bounced = false
    /// Consumption order: held requests are resubmitted in it.
    var sequence: UInt64 = 0
    /// When it was consumed (`MonotonicClock`): the start of its latency (`LatencyHistograms`).
    var consumedAt: UInt64 = 0
    var phase: Phase = .free
    /// The errno that put it on hold (`phase == .held`): its answer when it is failed later
    /// (timeout, `fail-held`, detach) rather than resubmitted.
    var heldErrno: Int32 = 0
    var stage: Stage = .data
    /// Bytes of the data stage already transferred (short completions resume from here).
    var transferred: Int = 0
}

/// Preallocated storage for every request the ring can have outstanding.
///
/// Sized once per attach from `ring-entries` (the ring check guarantees no more than that many
/// consumed-and-unanswered requests), so the per-request path never allocates: records, iocbs,
/// iovecs and segment copies are slots in these arrays, addressed by the record index that also
/// travels through the kernel as the iocb's `data`.
///
/// Every index has room for the largest request, an INDIRECT one of 256 segments (or a virtio
/// chain of `VhostUserDeviceConfiguration.iovecCapacity` iovecs): 256 source iovecs and 256
/// submission iovecs (16 bytes each), 8 KiB per entry, 4 MiB at the default largest ring
/// (order 4, 512 entries), 64 MiB of address space at order 8. Any ring entry may be
/// INDIRECT, so a smaller shared pool would need back-pressure on consumption; instead these two
/// arrays are allocated without being initialized (plain C structs, always written before they
/// are read). Allocations this large typically come from fresh `mmap` (glibc's threshold is
/// 128 KiB) or untouched heap, which the kernel backs page by page on first write, so mostly the
/// pages of entries that carried long requests become resident; the worst case is the full size.
struct RequestTable: ~Copyable {
    /// Segment and iovec room per record index.
    static let segmentsPerRequest = RingLayout.maxIndirectSegments

    let capacity: Int
    let records: UnsafeMutablePointer<RequestRecord>
    let iocbs: UnsafeMutablePointer<iocb>
    /// `segmentsPerRequest` per record index: what the iocb points at (the untransferred rest).
    let iovecs: UnsafeMutablePointer<iovec>
    /// `segmentsPerRequest` per record index: the request's whole data as the front validated it
    /// (blkif segments turned into addresses in the data pages; a virtio chain's data iovecs).
    let sources: UnsafeMutablePointer<iovec>
    /// Where an INDIRECT request's descriptors are copied once and validated, before a record
    /// exists for it (`RequestValidator.validateIndirect`).
    let indirectDescriptors: UnsafeMutablePointer<clibaio_blkif_segment>
    /// Free record indices (a stack).
    private let freeStack: UnsafeMutablePointer<Int32>
    private var freeCount: Int
    /// FIFO of record indices whose iocb awaits `io_submit`.
    private let queue: UnsafeMutablePointer<Int32>
    private var queueHead = 0
    private(set) var queueCount = 0
    /// Scratch array of iocb pointers handed to `io_submit`.
    let submitBatch: UnsafeMutablePointer<UnsafeMutablePointer<iocb>?>
    /// Scratch array `io_getevents` fills.
    let events: UnsafeMutablePointer<io_event>
    let eventCapacity: Int

    init(capacity: Int) {
        self.capacity = capacity
        records = .allocate(capacity: capacity)
        records.initialize(repeating: RequestRecord(), count: capacity)
        iocbs = .allocate(capacity: capacity)
        iocbs.initialize(repeating: iocb(), count: capacity)
        iovecs = .allocate(capacity: capacity * Self.segmentsPerRequest)
        sources = .allocate(capacity: capacity * Self.segmentsPerRequest)
        indirectDescriptors = .allocate(capacity: RingLayout.maxIndirectSegments)
        indirectDescriptors.initialize(repeating: clibaio_blkif_segment(), count: RingLayout.maxIndirectSegments)
        freeStack = .allocate(capacity: capacity)
        for i in 0..<capacity { freeStack[i] = Int32(capacity - 1 - i) }
        freeCount = capacity
        queue = .allocate(capacity: capacity)
        submitBatch = .allocate(capacity: capacity)
        eventCapacity = min(capacity, 256)
        events = .allocate(capacity: eventCapacity)
    }

    deinit {
        records.deallocate()
        iocbs.deallocate()
        iovecs.deallocate()
        sources.deallocate()
        indirectDescriptors.deallocate()
        freeStack.deallocate()
        queue.deallocate()
        submitBatch.deallocate()
        events.deallocate()
    }

    var used: Int { capacity - freeCount }

    /// The first `count` (at most `segmentsPerRequest`) source iovecs of `index`, as storage a
    /// front fills.
    @inline(__always)
    func sourceStorage(_ index: Int, count: Int) -> UnsafeMutableBufferPointer<iovec> {
        UnsafeMutableBufferPointer(start: sources + index * Self.segmentsPerRequest, count: count)
    }

    mutating func allocate() -> Int? {
        guard freeCount > 0 else { return nil }
        freeCount -= 1
        return Int(freeStack[freeCount])
    }

    mutating func release(_ index: Int) {
        records[index].phase = .free
        freeStack[freeCount] = Int32(index)
        freeCount += 1
    }

    mutating func enqueue(_ index: Int) {
        records[index].phase = .queued
        queue[(queueHead + queueCount) % capacity] = Int32(index)
        queueCount += 1
    }

    /// Copies up to `max` queued iocb pointers, oldest first, into `submitBatch`.
    func fillBatch(max: Int) -> Int {
        let n = min(max, queueCount)
        for i in 0..<n {
            let index = Int(queue[(queueHead + i) % capacity])
            submitBatch[i] = iocbs + index
        }
        return n
    }

    /// Removes the `n` oldest queued entries (they were accepted, or the first was rejected).
    mutating func dequeue(_ n: Int) {
        queueHead = (queueHead + n) % capacity
        queueCount -= n
    }

    func queued(at offset: Int) -> Int { Int(queue[(queueHead + offset) % capacity]) }
}
