/// What the front does with one request header.
package enum NBDRequestDecision: Equatable, Sendable {
    /// Valid: execute it (a write's payload follows on the wire).
    case execute(NBDRequest)
    /// Answer `error` without touching the image. A write's payload (`payloadLength` of the
    /// header) still follows and must be read and dropped to stay in step.
    case refuse(cookie: UInt64, error: NBDError)
    /// `NBD_CMD_DISC`: answer nothing, finish what is in flight, then close.
    case disconnect
    /// The stream cannot be trusted any more: close without a reply, as the spec allows.
    case violation(NBDViolation)
}

/// A client error the spec lets the server answer with a hard disconnect.
package enum NBDViolation: Equatable, Sendable, CustomStringConvertible {
    /// Not `NBD_REQUEST_MAGIC`: the stream is out of step (or was never NBD).
    case badMagic(UInt32)
    /// A write longer than the 32 MiB maximum: reading its payload to skip it is the denial of
    /// service the spec's bound exists to prevent.
    case payloadTooLarge(UInt32)

    package var description: String {
        switch self {
        case .badMagic(let magic): "bad request magic 0x\(String(magic, radix: 16))"
        case .payloadTooLarge(let length): "write of \(length) bytes exceeds the 32 MiB maximum"
        }
    }
}
