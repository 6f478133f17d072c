/// Virtio feature bits (virtio 1.x §6, <linux/virtio_blk.h>, <linux/virtio_ring.h>) and the
/// vhost-user protocol feature bits (vhost-user.rst) this backend speaks of.
package enum VirtioFeatures {
    package static let blkSizeMax: UInt64 = 1 << 1
    package static let blkSegMax: UInt64 = 1 << 2
    package static let blkReadOnly: UInt64 = 1 << 5
    package static let blkBlockSize: UInt64 = 1 << 6
    package static let blkFlush: UInt64 = 1 << 9
    package static let blkDiscard: UInt64 = 1 << 13
    package static let blkWriteZeroes: UInt64 = 1 << 14
    package static let ringIndirectDescriptors: UInt64 = 1 << 28
    package static let ringEventIndex: UInt64 = 1 << 29
    /// VHOST_USER_F_PROTOCOL_FEATURES: GET/SET_PROTOCOL_FEATURES are available.
    package static let vhostUserProtocolFeatures: UInt64 = 1 << 30
    package static let version1: UInt64 = 1 << 32

    /// What the device offers in GET_FEATURES.
    package static func offered(readOnly: Bool, discard: Bool = true) -> UInt64 {
        var f =
            version1 | ringEventIndex | ringIndirectDescriptors | vhostUserProtocolFeatures | blkSizeMax | blkSegMax
            | blkBlockSize | blkFlush
        if readOnly {
            f |= blkReadOnly
        } else if discard {
            f |= blkDiscard | blkWriteZeroes
        }
        return f
    }
}

/// vhost-user protocol feature bits (GET/SET_PROTOCOL_FEATURES).
package enum VhostUserProtocolFeatures {
    package static let multiQueue: UInt64 = 1 << 0
    package static let replyAck: UInt64 = 1 << 3
    package static let config: UInt64 = 1 << 9
    package static let inflightSharedMemory: UInt64 = 1 << 12
    package static let configureMemSlots: UInt64 = 1 << 15

    /// Offered: REPLY_ACK, CONFIG and INFLIGHT_SHMFD (requests in flight survive a back-end
    /// restart: `InflightQueue`). MQ comes later; CONFIGURE_MEM_SLOTS is not offered, so QEMU
    /// describes memory with SET_MEM_TABLE rather than ADD/REM_MEM_REG.
    package static let offered: UInt64 = replyAck | config | inflightSharedMemory
}
