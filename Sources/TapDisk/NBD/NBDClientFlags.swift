/// The 32 client flags that answer the handshake flags. Any other bit set means a client this
/// server does not understand, and the spec has the server drop the connection.
package struct NBDClientFlags: OptionSet, Hashable, Sendable {
    package var rawValue: UInt32
    package init(rawValue: UInt32) { self.rawValue = rawValue }

    package static let fixedNewstyle = Self(rawValue: 1 << 0)
    package static let noZeroes = Self(rawValue: 1 << 1)
    package static let known: Self = [.fixedNewstyle, .noZeroes]
}
