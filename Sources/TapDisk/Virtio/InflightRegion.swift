import CLibAIO
import Glibc

/// GET_INFLIGHT_FD / SET_INFLIGHT_FD payload (QEMU's VhostUserInflight, 24 bytes).
package struct VhostUserInflightDescription: Equatable, Sendable {
    package var mmapSize: UInt64
    package var mmapOffset: UInt64
    package var queueCount: UInt16
    package var queueSize: UInt16

    package init(mmapSize: UInt64, mmapOffset: UInt64, queueCount: UInt16, queueSize: UInt16) {
        self.mmapSize = mmapSize
        self.mmapOffset = mmapOffset
        self.queueCount = queueCount
        self.queueSize = queueSize
    }

    package static let byteCount = 24
}

/// Why an inflight region was refused.
package enum InflightRegionError: Error, Equatable, Sendable {
    /// num_queues outside 1...8, or queue_size zero, not a power of two or above the maximum.
    case badShape(queueCount: UInt16, queueSize: UInt16)
    /// mmap_size smaller than the regions need, or mmap_offset + mmap_size past the file.
    case badSize(mmapSize: UInt64, mmapOffset: UInt64, fileSize: UInt64)
    /// The region's desc_num is not the queue's size (a region made for another ring).
    case sizeMismatch(region: UInt16, queue: Int)
    /// The fd could still be truncated by the front-end (touching it would SIGBUS us).
    case notSealedAgainstShrink
    case system(Errno)
}

/// Owner of the inflight shared memory of one vhost-user connection: the memfd and its mapping.
///
/// GET_INFLIGHT_FD makes one (`create`), sealed against growing and shrinking so the front-end
/// can never turn our stores into SIGBUS; QEMU keeps the fd and hands it back with
/// SET_INFLIGHT_FD (`init(adopting:)`) to each back-end it connects, across restarts.
/// `~Copyable`: the mapping is unmapped exactly once; the queue's `InflightQueue` view must be
/// dropped first (`VhostUserDevice` drops the queue before it replaces this).
package struct InflightRegion: ~Copyable {
    package let descriptor: FileDescriptor
    private let mapping: UnsafeMutableRawPointer
    private let mappingLength: Int
    private let start: UnsafeMutableRawPointer
    package let description: VhostUserInflightDescription

    package static let maxQueues: UInt16 = 8

    /// A fresh zeroed region for `queueCount` queues of `queueSize` entries, every queue header
    /// formatted (version 1, desc_num).
    package static func create(queueCount: UInt16, queueSize: UInt16, maxQueueSize: UInt32)
        throws(InflightRegionError) -> InflightRegion
    {
        try check(queueCount: queueCount, queueSize: queueSize, maxQueueSize: maxQueueSize)
        let bytes = Int(queueCount) * InflightQueue.regionBytes(queueSize: Int(queueSize))
        let raw = clibaio_memfd_create("tapdisk-inflight", clibaio_MFD_CLOEXEC | clibaio_MFD_ALLOW_SEALING)
        guard raw >= 0 else { throw .system(Errno(rawValue: -raw)) }
        let fd = FileDescriptor(adopting: raw)
        guard ftruncate(fd.rawValue, off_t(bytes)) == 0 else { throw .system(.current) }
        let sealed = clibaio_add_seals(fd.rawValue, clibaio_F_SEAL_SHRINK | clibaio_F_SEAL_GROW | clibaio_F_SEAL_SEAL)
        guard sealed == 0 else { throw .system(Errno(rawValue: -sealed)) }
        let region = try InflightRegion(
            adopting: fd,
            description: VhostUserInflightDescription(
                mmapSize: UInt64(bytes), mmapOffset: 0, queueCount: queueCount, queueSize: queueSize),
            maxQueueSize: maxQueueSize, requireShrinkSeal: true)
        for q in 0..<Int(queueCount) { region.queue(q).format() }
        return region
    }

    /// Maps a region the front-end handed over (SET_INFLIGHT_FD), after checking its shape
    /// and that the file is large enough for it.
    package init(
        adopting fd: consuming FileDescriptor, description: VhostUserInflightDescription, maxQueueSize: UInt32,
        requireShrinkSeal: Bool
    ) throws(InflightRegionError) {
        try Self.check(queueCount: description.queueCount, queueSize: description.queueSize, maxQueueSize: maxQueueSize)
        let needed =
            UInt64(description.queueCount) * UInt64(InflightQueue.regionBytes(queueSize: Int(description.queueSize)))
        var fileSize: UInt64 = 0
        let rc = clibaio_fd_size(fd.rawValue, &fileSize)
        guard rc == 0 else { throw .system(Errno(rawValue: -rc)) }
        let (end, overflow) = description.mmapOffset.addingReportingOverflow(description.mmapSize)
        guard !overflow, description.mmapSize >= needed, end <= fileSize, end <= UInt64(Int.max) else {
            throw .badSize(mmapSize: description.mmapSize, mmapOffset: description.mmapOffset, fileSize: fileSize)
        }
        if requireShrinkSeal {
            let seals = clibaio_get_seals(fd.rawValue)
            guard seals >= 0, seals & clibaio_F_SEAL_SHRINK != 0 else { throw .notSealedAgainstShrink }
        }
        // Mapped from 0 so mmap_offset needs no page alignment.
        let length = Int(end)
        guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0), p != MAP_FAILED else {
            throw .system(.current)
        }
        descriptor = fd
        mapping = p
        mappingLength = length
        start = p + Int(description.mmapOffset)
        self.description = description
    }

    deinit { munmap(mapping, mappingLength) }

    /// The view of queue `index`'s region (the caller checks `index < queueCount`).
    package func queue(_ index: Int) -> InflightQueue {
        InflightQueue(
            base: start + index * InflightQueue.regionBytes(queueSize: Int(description.queueSize)),
            size: Int(description.queueSize))
    }

    private static func check(queueCount: UInt16, queueSize: UInt16, maxQueueSize: UInt32)
        throws(InflightRegionError)
    {
        guard (1...maxQueues).contains(queueCount), queueSize > 0, queueSize & (queueSize - 1) == 0,
            UInt32(queueSize) <= maxQueueSize
        else { throw .badShape(queueCount: queueCount, queueSize: queueSize) }
    }
}
