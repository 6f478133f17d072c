import CLibAIO

/// How the image is opened (`--cache`, docs/protocol.md §1), named as in QEMU.
package enum CacheMode: String, Sendable, CaseIterable {
    /// O_DIRECT: the default; no page cache between the guest and the disk.
    case none
    /// Buffered: fast, but writeback failures surface only at the next flush.
    case writeback
    /// Buffered plus O_DSYNC: every write is durable (and its failure reported) before OKAY.
    case writethrough
    /// O_DIRECT plus O_DSYNC: the mode for thin or overcommitted storage (§5.3).
    case directsync

    package var usesDirectIO: Bool { self == .none || self == .directsync }

    package var openFlags: Int32 {
        switch self {
        case .none: clibaio_O_DIRECT
        case .writeback: 0
        case .writethrough: clibaio_O_DSYNC
        case .directsync: clibaio_O_DIRECT | clibaio_O_DSYNC
        }
    }
}
