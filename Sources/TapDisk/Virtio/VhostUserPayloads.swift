/// SET_VRING_NUM / SET_VRING_BASE / GET_VRING_BASE / SET_VRING_ENABLE payload.
package struct VhostUserVringState: Equatable, Sendable {
    package var index: UInt32
    package var num: UInt32

    package init(index: UInt32, num: UInt32) {
        self.index = index
        self.num = num
    }
}

/// SET_VRING_ADDR payload. The three ring addresses are front-end (QEMU) user addresses, which
/// `GuestMemory.translate(user:length:)` maps; the log address is unused (no LOG_ALL).
package struct VhostUserVringAddress: Equatable, Sendable {
    package var index: UInt32
    package var flags: UInt32
    package var descriptorTable: UInt64
    package var usedRing: UInt64
    package var availableRing: UInt64
    package var logGuestAddress: UInt64

    package init(
        index: UInt32, flags: UInt32, descriptorTable: UInt64, usedRing: UInt64, availableRing: UInt64,
        logGuestAddress: UInt64 = 0
    ) {
        self.index = index
        self.flags = flags
        self.descriptorTable = descriptorTable
        self.usedRing = usedRing
        self.availableRing = availableRing
        self.logGuestAddress = logGuestAddress
    }
}

/// One SET_MEM_TABLE region as the front-end describes it (nothing here is trusted yet).
package struct VhostUserMemoryRegion: Equatable, Sendable {
    package var guestPhysicalAddress: UInt64
    package var size: UInt64
    package var userAddress: UInt64
    package var mmapOffset: UInt64

    package init(guestPhysicalAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) {
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.userAddress = userAddress
        self.mmapOffset = mmapOffset
    }

    package static let byteCount = 32
}

/// GET_CONFIG / SET_CONFIG payload: a window of the device config space.
package struct VhostUserConfigAccess: Equatable, Sendable {
    package var offset: UInt32
    package var size: UInt32
    package var flags: UInt32
    /// The bytes that followed (SET_CONFIG's new values; GET_CONFIG's are ignored).
    package var bytes: [UInt8]

    package init(offset: UInt32, size: UInt32, flags: UInt32, bytes: [UInt8]) {
        self.offset = offset
        self.size = size
        self.flags = flags
        self.bytes = bytes
    }
}

/// SET_VRING_KICK / CALL / ERR payload: the vring index and whether an fd came along.
package struct VhostUserVringFile: Equatable, Sendable {
    package var index: UInt32
    /// The no-fd bit (0x100): the front-end asks for polling (kick) or no notification (call).
    package var hasDescriptor: Bool
}
