import CLibAIO

/// One split virtqueue's inflight region (vhost-user.rst, "Inflight I/O tracking"): which heads
/// the device took and has not yet answered, kept in shared memory that the front-end (QEMU)
/// holds across a back-end restart, so the next back-end can resubmit them.
///
/// Layout (`clibaio_inflight_queue_split`, checked in vhost.c): a 16-byte header
/// `{u64 features, u16 version, u16 desc_num, u16 last_batch_head, u16 used_idx}`, then
/// `desc_num` 16-byte slots `{u8 inflight, u8 padding[5], u16 next, u64 counter}`.
///
/// The protocol, and why it is right for a batch of any size:
/// - **pop** (`markPopped`): the slot's `counter` (pop order), then `inflight = 1`.
/// - **answer**, for each head of a batch (`stage`): `desc[h].next = last_batch_head`,
///   `last_batch_head = h`. The batch is a list, newest first, reachable from `last_batch_head`.
/// - **publish** (`SplitVirtqueue.publishUsed`): the used elements, then one release store of
///   used->idx that adds the whole batch at once.
/// - **settle** (`settle(usedIndex:)`): walk `usedIndex - used_idx` links from
///   `last_batch_head`, clearing `inflight`, then store `used_idx = usedIndex`.
///
/// A restarted back-end runs the very same `settle` against the used->idx in guest memory.
/// Whatever step the old one died in, that finishes its work:
/// - before the used->idx store: `used_idx == used->idx`, the walk has length 0, every head
///   of the batch is still inflight and is resubmitted; none was published, so none is
///   answered twice. (`last_batch_head` and the links may be half rewritten: nobody reads them.)
/// - after it: `used->idx - used_idx` is exactly the batch size N — used->idx only ever moves
///   by whole batches, and `used_idx` was the previous batch's used->idx — and the first N
///   links from `last_batch_head` are exactly the batch, because staging built the list in full
///   before the store. Clearing is idempotent, so a settle cut short (even a restart's) is
///   finished by the next.
/// libvhost-user and SPDK clear only `desc[last_batch_head]`, which is this walk for N = 1.
///
/// The slots outside a live batch are only ever written by the back-end that owns the ring, in
/// program order made explicit with fences (a killed process loses no store it executed: the
/// pages are the memfd's). A non-owning view: `InflightRegion` owns the mapping and outlives
/// the queue that uses this.
package struct InflightQueue {
    package let base: UnsafeMutableRawPointer
    package let size: Int
    /// The next pop's counter: above every counter in the region after `recover`.
    private var counter: UInt64 = 1

    package static let headerBytes = 16
    package static let slotBytes = 16
    package static let version: UInt16 = 1

    /// Bytes of one queue's region: header and slots, rounded up to 64 as libvhost-user does
    /// (QEMU only stores the size the back-end reports; the rounding keeps regions aligned).
    package static func regionBytes(queueSize: Int) -> Int { (headerBytes + slotBytes * queueSize + 63) & ~63 }

    package init(base: UnsafeMutableRawPointer, size: Int) {
        self.base = base
        self.size = size
    }

    @inline(__always) private func slot(_ head: Int) -> UnsafeMutableRawPointer {
        base + Self.headerBytes + Self.slotBytes * head
    }

    package var descriptorCount: UInt16 { clibaio_load_u16_relaxed(base + 10) }
    package var lastBatchHead: UInt16 { clibaio_load_u16_relaxed(base + 12) }
    package var usedIndex: UInt16 { clibaio_load_u16_relaxed(base + 14) }
    package func isInflight(_ head: Int) -> Bool { clibaio_load_u8_relaxed(slot(head)) != 0 }
    package func counter(_ head: Int) -> UInt64 { clibaio_load_u64_relaxed(slot(head) + 8) }

    /// A fresh region's header (GET_INFLIGHT_FD): version 1, `desc_num` = the queue size.
    package func format() {
        clibaio_store_u16_relaxed(base + 8, Self.version)
        clibaio_store_u16_relaxed(base + 10, UInt16(truncatingIfNeeded: size))
    }

    /// The head was taken from the avail ring. The counter first, so a set flag always has its
    /// counter; the fence keeps both before whatever the request does next.
    @inline(__always)
    package mutating func markPopped(_ head: UInt16) {
        let s = slot(Int(head))
        clibaio_store_u64_relaxed(s + 8, counter)
        counter &+= 1
        clibaio_store_u8_relaxed(s, 1)
        clibaio_fence_release()
    }

    /// Links `head` into the batch being answered (before its used element is published).
    @inline(__always)
    package func stage(_ head: UInt16) {
        clibaio_store_u16_relaxed(slot(Int(head)) + 6, lastBatchHead)
        clibaio_store_u16_relaxed(base + 12, head)
    }

    /// Clears the heads that used->idx (`usedIndex`) published beyond the region's `used_idx`,
    /// then records `usedIndex`. Called after every publish, and by `recover`. The release fence
    /// keeps the clears after the caller's used->idx store; the release store of `used_idx`
    /// keeps it after the clears. The walk is bounded by the queue size, so a corrupt region
    /// cannot make it loop.
    @inline(__always)
    package func settle(usedIndex: UInt16) {
        clibaio_fence_release()
        var remaining = min(Int(usedIndex &- self.usedIndex), size)
        var head = Int(lastBatchHead)
        while remaining > 0 && head < size {
            let s = slot(head)
            clibaio_store_u8_relaxed(s, 0)
            head = Int(clibaio_load_u16_relaxed(s + 6))
            remaining -= 1
        }
        clibaio_store_u16_release(base + 14, usedIndex)
    }

    /// After a (re)start, before the avail ring is read: finishes the last batch (`settle`
    /// against used->idx as guest memory holds it) and returns the heads still in flight in the
    /// order they were popped; the next counter continues above them. The caller resumes the
    /// avail ring at used->idx + that count: every chain taken is either counted in used->idx or
    /// still inflight, and only the last one popped can be neither (it died between the avail
    /// read and `markPopped`), which the avail ring then hands out again.
    package mutating func recover(usedIndex: UInt16) -> [UInt16] {
        settle(usedIndex: usedIndex)
        var heads: [(counter: UInt64, head: UInt16)] = []
        for h in 0..<size where isInflight(h) { heads.append((counter(h), UInt16(h))) }
        heads.sort { $0.counter < $1.counter }
        counter = (heads.last?.counter ?? 0) &+ 1
        return heads.map(\.head)
    }
}
