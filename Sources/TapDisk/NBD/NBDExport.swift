/// The one export a tapdiskd serves over NBD: its name, size, size constraints and what it can
/// do. The handshake advertises it and the request parser holds every request to it.
package struct NBDExport: Equatable, Sendable {
    /// The largest read or write payload (and `NBD_INFO_BLOCK_SIZE`'s maximum): 32 MiB, the
    /// spec's "never a denial of service" bound. A longer write is a disconnect, since its
    /// payload would have to be read to stay in step.
    package static let maximumPayload: UInt32 = 32 << 20
    /// The preferred block size: the page size, and ext4's and XFS's usual block.
    package static let preferredBlockSize: UInt32 = 4096

    /// The name clients ask for; the empty name (the spec's "default export") is accepted too.
    package var name: String
    package var size: UInt64
    /// The smallest addressable unit: the image's logical sector size, since the image is opened
    /// with `O_DIRECT` and an unaligned request could not be issued without a bounce.
    package var minimumBlockSize: UInt32
    package var readOnly: Bool
    /// Whether `NBD_CMD_TRIM` and `NBD_CMD_WRITE_ZEROES` are advertised (the image punches holes
    /// and zeroes ranges with `fallocate`, so a fast zero is always fast).
    package var canTrim: Bool

    package init(name: String, size: UInt64, minimumBlockSize: UInt32, readOnly: Bool, canTrim: Bool = true) {
        precondition(
            minimumBlockSize.nonzeroBitCount == 1 && minimumBlockSize <= Self.preferredBlockSize,
            "minimum block size \(minimumBlockSize) is not a power of two up to 4096")
        self.name = name
        self.size = size
        self.minimumBlockSize = minimumBlockSize
        self.readOnly = readOnly
        self.canTrim = canTrim
    }

    /// Whether a client's export name selects this export.
    package func matches(name requested: some Collection<UInt8>) -> Bool {
        requested.isEmpty || requested.elementsEqual(name.utf8)
    }

    /// The transmission flags for a client that did (or did not) negotiate structured replies.
    package func transmissionFlags(structuredReplies: Bool) -> NBDTransmissionFlags {
        var flags: NBDTransmissionFlags = [.hasFlags, .sendFlush, .sendFUA, .canMultiConn, .sendCache]
        if readOnly {
            flags.insert(.readOnly)
        } else {
            if canTrim { flags.formUnion([.sendTrim, .sendWriteZeroes, .sendFastZero]) }
        }
        if structuredReplies { flags.insert(.sendDF) }
        return flags
    }
}
