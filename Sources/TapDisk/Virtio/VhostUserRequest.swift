/// The front-end → back-end requests of the vhost-user protocol (QEMU docs/interop/vhost-user.rst).
///
/// Each case knows the one payload size it may carry and how many fds may ride with it, so a
/// message is judged by a table rather than by ad-hoc checks in every handler: anything the table
/// does not allow is a protocol violation and ends the connection.
package enum VhostUserRequest: UInt32, Sendable, CaseIterable {
    case getFeatures = 1
    case setFeatures = 2
    case setOwner = 3
    case resetOwner = 4
    case setMemTable = 5
    case setLogBase = 6
    case setLogFD = 7
    case setVringNum = 8
    case setVringAddr = 9
    case setVringBase = 10
    case getVringBase = 11
    case setVringKick = 12
    case setVringCall = 13
    case setVringErr = 14
    case getProtocolFeatures = 15
    case setProtocolFeatures = 16
    case getQueueNum = 17
    case setVringEnable = 18
    case sendRARP = 19
    case netSetMTU = 20
    case setBackendReqFD = 21
    case iotlbMessage = 22
    case setVringEndian = 23
    case getConfig = 24
    case setConfig = 25
    case getInflightFD = 31
    case setInflightFD = 32
    case resetDevice = 34
    case getMaxMemSlots = 36
    case addMemReg = 37
    case remMemReg = 38
    case setStatus = 39
    case getStatus = 40

    /// The payload sizes this request may carry (exact; SET_MEM_TABLE and the config requests
    /// are variable and judged by `VhostUserMessage`).
    package enum PayloadRule: Equatable, Sendable {
        case exactly(Int)
        /// SET_MEM_TABLE: 8 + 32 × nregions, 1 ≤ nregions ≤ 8.
        case memoryTable
        /// GET_CONFIG / SET_CONFIG: 12 + size, size ≤ 256.
        case config
        /// Requests this backend never negotiates; their payloads are not inspected.
        case notSupported
    }

    package var payloadRule: PayloadRule {
        switch self {
        case .getFeatures, .getProtocolFeatures, .getQueueNum, .getMaxMemSlots, .setOwner, .resetOwner,
            .resetDevice, .getStatus:
            .exactly(0)
        case .setFeatures, .setProtocolFeatures, .setVringKick, .setVringCall, .setVringErr, .setStatus:
            .exactly(8)
        case .setVringNum, .setVringBase, .getVringBase, .setVringEnable:
            .exactly(8)
        case .setVringAddr:
            .exactly(40)
        case .getInflightFD, .setInflightFD:
            .exactly(VhostUserInflightDescription.byteCount)
        case .setMemTable:
            .memoryTable
        case .getConfig, .setConfig:
            .config
        case .setLogBase, .setLogFD, .sendRARP, .netSetMTU, .iotlbMessage, .setVringEndian, .addMemReg, .remMemReg,
            .setBackendReqFD:
            .notSupported
        }
    }

    /// How many SCM_RIGHTS fds may accompany the request. The vring fd requests carry one unless
    /// the payload's "no fd" bit (0x100) says otherwise; `VhostUserMessage` applies that rule.
    package var allowedDescriptors: ClosedRange<Int> {
        switch self {
        case .setMemTable: 1...VhostUserLimits.maxMemoryRegions
        case .setVringKick, .setVringCall, .setVringErr: 0...1
        case .setBackendReqFD, .setLogFD, .setInflightFD, .addMemReg: 1...1
        case .setLogBase: 1...1
        default: 0...0
        }
    }

    /// Requests whose reply is part of the protocol (independent of REPLY_ACK).
    package var hasReply: Bool {
        switch self {
        case .getFeatures, .getProtocolFeatures, .getQueueNum, .getVringBase, .getConfig, .getMaxMemSlots,
            .getStatus, .getInflightFD:
            true
        default:
            false
        }
    }
}

/// Bounds the protocol layer enforces before anything is parsed or mapped.
package enum VhostUserLimits {
    /// VHOST_MEMORY_BASELINE_NREGIONS: the most regions a SET_MEM_TABLE may carry.
    package static let maxMemoryRegions = 8
    /// VHOST_USER_MAX_CONFIG_SIZE.
    package static let maxConfigSize = 256
    /// The largest payload any supported request carries (a full memory table is 264 bytes,
    /// a full config message 268). Anything larger is hostile and ends the connection.
    package static let maxPayload = 12 + maxConfigSize
    /// The vring index field of SET_VRING_KICK/CALL/ERR, and the bit saying "no fd attached".
    package static let vringIndexMask: UInt64 = 0xff
    package static let vringNoFDBit: UInt64 = 0x100
}
