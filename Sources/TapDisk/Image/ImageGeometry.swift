/// The disk as the frontend sees it, fixed at startup (docs/protocol.md §1).
package struct ImageGeometry: Sendable, Equatable {
    /// Size in 512-byte sectors (image size / 512, rounded down).
    package var sectors: UInt64
    /// Logical sector size: requests must be aligned to it. With O_DIRECT it is the filesystem's
    /// DIO offset alignment, so the kernel never sees a misaligned direct request.
    package var sectorSize: UInt32
    package var physicalSectorSize: UInt32
    package var isBlockDevice: Bool
    package var discard: Bool
    package var discardGranularity: UInt32

    /// `sectorSize / 512`: alignment, in protocol sectors, of every segment and range.
    package var sectorsPerLogicalBlock: UInt64 { UInt64(sectorSize / 512) }
}
