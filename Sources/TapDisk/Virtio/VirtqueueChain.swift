import Glibc

/// A descriptor chain that passed every check: the request header (copied), the data as host
/// iovecs in the caller's storage, and where the status byte goes.
///
/// The iovecs are `storage[0 ..< readableSegments]` (device-readable data after the 16-byte
/// header) followed by `storage[readableSegments ..< readableSegments + writableSegments]`
/// (device-writable data before the status byte). Header and status are never in them, so the
/// engine hands the iovecs to the kernel as they are (zero copy).
package struct VirtqueueChain {
    package var head: UInt16
    /// virtio_blk_outhdr, copied once out of guest memory.
    package var type: UInt32
    package var ioprio: UInt32
    package var sector: UInt64
    package var readableSegments: Int
    package var writableSegments: Int
    package var readableBytes: UInt64
    /// Device-writable data bytes, excluding the status byte.
    package var writableBytes: UInt64
    /// The last device-writable byte of the chain.
    package var status: UnsafeMutablePointer<UInt8>

    package var segmentCount: Int { readableSegments + writableSegments }
}

/// Why a chain was refused. Its head still gets exactly one used entry.
package enum VirtqueueChainError: Equatable, Sendable {
    /// A `next` (or the head) beyond the table it indexes.
    case descriptorIndexOutOfRange(UInt16)
    /// More descriptors than the table holds: a loop, or a chain longer than the queue.
    case chainTooLong
    /// A buffer or indirect table not inside guest memory.
    case addressOutOfRange
    /// The chain's total length exceeds `VirtqueueLimits.maxChainBytes`.
    case chainBytesExceeded
    /// More data segments than the caller's iovec storage holds.
    case tooManySegments
    case indirectNotNegotiated
    /// INDIRECT anywhere but on the head, together with NEXT, or inside an indirect table.
    case indirectMisplaced
    /// Indirect table length 0, not a multiple of 16, or above `maxIndirectEntries`.
    case indirectBadLength
    /// A device-readable descriptor after a device-writable one.
    case readableAfterWritable
    /// Fewer than 16 device-readable bytes: no virtio_blk_outhdr.
    case headerTooShort
    /// No device-writable byte at the end of the chain.
    case noStatusByte
}

/// Why the queue stopped. Sticky until the ring is set up again: the guest driver is broken or
/// hostile, and nothing more is taken from this ring (the device would report NEEDS_RESET).
package enum VirtqueueFault: Equatable, Sendable {
    /// avail->idx moved more than the queue size past our last_avail_idx.
    case availableIndexJump(UInt16)
    /// An avail ring entry names a head beyond the queue.
    case headOutOfRange(UInt16)
    /// An avail ring entry names a head still in flight (would give one head two used entries).
    case headInFlight(UInt16)
}

/// One `SplitVirtqueue.pop` result.
package enum VirtqueuePop {
    case empty
    case chain(VirtqueueChain)
    /// Complete the head (0 bytes written); write IOERR to `status` first when it is known.
    case malformed(head: UInt16, VirtqueueChainError, status: UnsafeMutablePointer<UInt8>?)
    case broken(VirtqueueFault)
}

/// Why SET_VRING_NUM/ADDR cannot start a ring.
package enum VirtqueueSetupError: Error, Equatable, Sendable {
    /// Zero, not a power of two, or above 32768.
    case badSize(UInt32)
    /// desc not 16-, avail not 2-, used not 4-byte aligned.
    case misaligned
    /// A ring does not lie inside one mapped region (front-end user addresses).
    case ringNotMapped
    /// The inflight region was made for a queue of another size.
    case inflightSizeMismatch(region: UInt16, queue: Int)
}

/// Bounds a chain must respect beyond the queue size.
package struct VirtqueueLimits: Sendable {
    /// Total bytes over all descriptors of one chain (header, data and status).
    package var maxChainBytes: UInt64
    /// Entries of one indirect table (QEMU's VIRTQUEUE_MAX_SIZE is 1024).
    package var maxIndirectEntries: Int

    package init(maxChainBytes: UInt64, maxIndirectEntries: Int = 1024) {
        self.maxChainBytes = maxChainBytes
        self.maxIndirectEntries = maxIndirectEntries
    }
}
