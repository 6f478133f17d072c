/// The engine's state for the blkif ring front, one stored property of `Engine` (`blkif`): set
/// by `attach`, put back to this empty value by `finishDetach`. Nothing in the core reads it; the
/// blkif front's functions (Engine+BlkifFront.swift) do.
struct BlkifFront: ~Copyable {
    /// The daemon's view of the shared ring (the detached placeholder when no ring is attached).
    var ring = BackendRing.detached
    /// The mapping and eventfds of the attachment, owned here until detach.
    var attachment: RingAttachment? = nil
    /// Judges every slot against the data pages and the disk; bounded anew by `updateGeometry`.
    var validator = RequestValidator(
        dataPages: 0, sectors: 0, blockSectors: 1, readOnly: true, discardSupported: false)
    /// The first data page in the mapping: a segment's gref is a page index from here.
    var dataBase = UnsafeMutableRawPointer(bitPattern: 0x1000)!
    /// Signalled after responses are published, when the frontend asked for it.
    var notifyFD: Int32 = -1

    init() {}

    /// Requests beyond `sectors` are refused from now on (the image was resized underneath).
    mutating func updateGeometry(sectors: UInt64) { validator.sectors = sectors }
}

extension BlkifStatus {
    /// The ring can say only this much of a completion; the errno is counted, not sent.
    @inline(__always)
    init(_ status: Completion.Status) {
        switch status {
        case .ok: self = .okay
        case .error: self = .error
        case .notSupported: self = .notSupported
        }
    }
}
