/// The 16 flags of a structured reply chunk.
package struct NBDReplyFlags: OptionSet, Hashable, Sendable {
    package var rawValue: UInt16
    package init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The last chunk of this reply: the spec requires it on exactly one chunk per request.
    package static let done = Self(rawValue: 1 << 0)
}
