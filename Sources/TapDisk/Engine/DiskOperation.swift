/// What the engine does for a request, whichever front it came from: the blkif ring's operations
/// and virtio-blk's types both map onto these, so the I/O core decides on these and not on
/// any front's opcodes; what a front must echo lives in the record's front-private `tag`.
package enum DiskOperation: UInt8, Sendable {
    case read
    case write
    /// Sync the image; a blkif FLUSH with data writes it after the sync (Linux blkback order).
    case flush
    /// Wait for everything consumed before it, write its data (if any), then sync.
    case barrier
    /// Punch a hole (blkif DISCARD, virtio DISCARD, virtio WRITE_ZEROES with UNMAP).
    case discard
    /// Zero a range and keep it allocated (virtio WRITE_ZEROES without UNMAP).
    case writeZeroes

    /// The name events and logs use.
    package var eventName: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case .flush: "flush"
        case .barrier: "barrier"
        case .discard: "discard"
        case .writeZeroes: "write-zeroes"
        }
    }

    /// Ranges of the image it changes without data (fallocate).
    var isRangeOperation: Bool { self == .discard || self == .writeZeroes }
}
