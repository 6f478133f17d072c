/// The 16 command flags of a transmission request.
package struct NBDCommandFlags: OptionSet, Hashable, Sendable {
    package var rawValue: UInt16
    package init(rawValue: UInt16) { self.rawValue = rawValue }

    package static let fua = Self(rawValue: 1 << 0)
    package static let noHole = Self(rawValue: 1 << 1)
    package static let dontFragment = Self(rawValue: 1 << 2)
    package static let requestOne = Self(rawValue: 1 << 3)
    package static let fastZero = Self(rawValue: 1 << 4)
}
