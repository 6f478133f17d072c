/// The fixed facts a vhost-user-blk device presents: disk geometry, limits and identity.
package struct VhostUserDeviceConfiguration: Sendable {
    /// Capacity in 512-byte sectors.
    package var capacitySectors: UInt64
    /// Logical block size (power of two, ≥ 512).
    package var blockSize: UInt32
    package var readOnly: Bool
    /// DISCARD and WRITE_ZEROES offered (the image can punch holes; never when read-only).
    package var discard = true
    /// Most data segments per request (virtio_blk_config.seg_max).
    package var segMax: UInt32 = 126
    /// Largest single segment (virtio_blk_config.size_max).
    package var sizeMax: UInt32 = 1 << 16
    package var maxDiscardSectors: UInt32 = 1 << 16
    package var maxWriteZeroesSectors: UInt32 = 1 << 16
    /// Largest queue SET_VRING_NUM may ask for.
    package var maxQueueSize: UInt32 = 1024
    /// Refuse guest RAM whose fds lack F_SEAL_SHRINK (memory-backend-memfd seals by default;
    /// memory-backend-file cannot). Off by default so file-backed guests still work; with it off,
    /// a front-end that truncates its RAM file can SIGBUS this daemon (and only it).
    package var requireShrinkSealedMemory = false
    /// GET_ID answer (at most 20 bytes are sent).
    package var serial: [UInt8] = Array("tapdiskd".utf8)

    package init(capacitySectors: UInt64, blockSize: UInt32, readOnly: Bool) {
        self.capacitySectors = capacitySectors
        self.blockSize = blockSize
        self.readOnly = readOnly
    }

    /// Data bytes one chain may carry, plus header, status and one DISCARD segment of slack.
    package var maxChainBytes: UInt64 { UInt64(segMax) * UInt64(sizeMax) + 16 + 16 + 1 }

    /// iovec entries a chain may need: every segment may be split once at a region edge.
    package var iovecCapacity: Int { Int(segMax) * 2 + 2 }

    package var disk: VirtioBlkDisk {
        VirtioBlkDisk(
            capacitySectors: capacitySectors, blockSize: blockSize, readOnly: readOnly, discard: discard && !readOnly,
            maxDiscardSectors: maxDiscardSectors, maxWriteZeroesSectors: maxWriteZeroesSectors)
    }

    package var config: VirtioBlkConfig {
        var c = VirtioBlkConfig(capacity: capacitySectors, sizeMax: sizeMax, segMax: segMax, blockSize: blockSize)
        if discard && !readOnly {
            c.maxDiscardSectors = maxDiscardSectors
            c.maxDiscardSegments = 1
            c.discardSectorAlignment = blockSize / 512
            c.maxWriteZeroesSectors = maxWriteZeroesSectors
            c.maxWriteZeroesSegments = 1
            c.writeZeroesMayUnmap = 1
        }
        return c
    }
}
