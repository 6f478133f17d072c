/// The 16 handshake flags the server sends after 'IHAVEOPT'.
package struct NBDHandshakeFlags: OptionSet, Hashable, Sendable {
    package var rawValue: UInt16
    package init(rawValue: UInt16) { self.rawValue = rawValue }

    package static let fixedNewstyle = Self(rawValue: 1 << 0)
    package static let noZeroes = Self(rawValue: 1 << 1)
}
