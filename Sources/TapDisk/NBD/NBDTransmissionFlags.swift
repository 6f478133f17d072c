/// The 16 transmission flags of an export, sent with `NBD_INFO_EXPORT` or after
/// `NBD_OPT_EXPORT_NAME`. A client must not use a feature whose flag is clear.
package struct NBDTransmissionFlags: OptionSet, Hashable, Sendable {
    package var rawValue: UInt16
    package init(rawValue: UInt16) { self.rawValue = rawValue }

    package static let hasFlags = Self(rawValue: 1 << 0)
    package static let readOnly = Self(rawValue: 1 << 1)
    package static let sendFlush = Self(rawValue: 1 << 2)
    package static let sendFUA = Self(rawValue: 1 << 3)
    package static let rotational = Self(rawValue: 1 << 4)
    package static let sendTrim = Self(rawValue: 1 << 5)
    package static let sendWriteZeroes = Self(rawValue: 1 << 6)
    /// Only with structured replies: the spec forbids it otherwise.
    package static let sendDF = Self(rawValue: 1 << 7)
    package static let canMultiConn = Self(rawValue: 1 << 8)
    package static let sendResize = Self(rawValue: 1 << 9)
    package static let sendCache = Self(rawValue: 1 << 10)
    package static let sendFastZero = Self(rawValue: 1 << 11)
}
