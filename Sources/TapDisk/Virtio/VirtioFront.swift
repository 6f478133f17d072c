/// The engine's state for the vhost-user-blk front, one stored property of `Engine` (`virtio`):
/// set by `attachVirtio` and the vhost-user messages, its device dropped by `finishDetach`.
/// Nothing in the core reads it; the virtio front's functions (Engine+VirtioFront.swift) and the
/// daemon's vhost-user socket (Daemon+VhostUser.swift) do.
struct VirtioFront: ~Copyable {
    /// The vhost-user-blk device: the front's control plane and its virtqueue.
    var device = VhostUserDevice(
        configuration: VhostUserDeviceConfiguration(capacitySectors: 0, blockSize: 512, readOnly: true))
    /// The disk as virtio-blk requests are judged against it (set at `attachVirtio`).
    var disk = VirtioBlkDisk(
        capacitySectors: 0, blockSize: 512, readOnly: true, discard: false, maxDiscardSectors: 0,
        maxWriteZeroesSectors: 0)
    /// iovecs one chain may fill (kept here: reading `device.configuration` per pop would copy
    /// its serial array, ARC traffic on the request path).
    var segments = 0
    /// The virtqueue that halted the disk (`VhostUserDevice.queueStarts` then), or nil.
    var brokenQueueStart: UInt64? = nil

    init() {}

    /// A virtio guest is not told (no config-change notification), but after a shrink its
    /// requests beyond the new end are refused IOERR, as the ring's are.
    mutating func updateGeometry(sectors: UInt64) { disk.capacitySectors = sectors }
}

extension VirtioBlkStatus {
    /// The status byte can say only this much of a completion; the errno is counted, not sent.
    @inline(__always)
    init(_ status: Completion.Status) {
        switch status {
        case .ok: self = .ok
        case .error: self = .ioError
        case .notSupported: self = .unsupported
        }
    }
}
