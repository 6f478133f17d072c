/// The reply types of the fixed-newstyle handshake; errors have bit 31 set.
package struct NBDOptionReplyType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    package var rawValue: UInt32
    package init(rawValue: UInt32) { self.rawValue = rawValue }

    package static let ack = Self(rawValue: 1)
    package static let server = Self(rawValue: 2)
    package static let info = Self(rawValue: 3)
    package static let metaContext = Self(rawValue: 4)

    package static let errorBit: UInt32 = 1 << 31
    package static let unsupported = Self(rawValue: errorBit | 1)
    package static let policy = Self(rawValue: errorBit | 2)
    package static let invalid = Self(rawValue: errorBit | 3)
    package static let platform = Self(rawValue: errorBit | 4)
    package static let tlsRequired = Self(rawValue: errorBit | 5)
    package static let unknown = Self(rawValue: errorBit | 6)
    package static let shutdown = Self(rawValue: errorBit | 7)
    package static let blockSizeRequired = Self(rawValue: errorBit | 8)
    package static let tooBig = Self(rawValue: errorBit | 9)

    package var isError: Bool { rawValue & Self.errorBit != 0 }

    package var description: String {
        switch self {
        case .ack: "NBD_REP_ACK"
        case .server: "NBD_REP_SERVER"
        case .info: "NBD_REP_INFO"
        case .metaContext: "NBD_REP_META_CONTEXT"
        case .unsupported: "NBD_REP_ERR_UNSUP"
        case .policy: "NBD_REP_ERR_POLICY"
        case .invalid: "NBD_REP_ERR_INVALID"
        case .platform: "NBD_REP_ERR_PLATFORM"
        case .tlsRequired: "NBD_REP_ERR_TLS_REQD"
        case .unknown: "NBD_REP_ERR_UNKNOWN"
        case .shutdown: "NBD_REP_ERR_SHUTDOWN"
        case .blockSizeRequired: "NBD_REP_ERR_BLOCK_SIZE_REQD"
        case .tooBig: "NBD_REP_ERR_TOO_BIG"
        default: "NBD_REP(\(rawValue))"
        }
    }
}
