/// The error codes of docs/protocol.md §2, spelled as they appear on the wire.
///
/// When several apply, a handler reports `badRequest` first, then `busy`, then
/// `invalidArgument` (§2), so a client can rely on the code of a message that is wrong in
/// several ways.
package enum ControlErrorCode: String, Sendable, CaseIterable {
    /// Not JSON, not an object, oversized, a missing or mistyped field, a bad tag.
    case badRequest = "bad-request"
    case unknownCommand = "unknown-command"
    /// Well-formed, but the value (or a passed fd) is unacceptable.
    case invalidArgument = "invalid-argument"
    /// A frontend is already attached.
    case busy
    case notAttached = "not-attached"
    case wrongState = "wrong-state"
    case ioError = "io-error"
    case internalError = "internal"
}
