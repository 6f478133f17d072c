/// The transmission request types tapdiskd serves. Any other value is answered `NBD_EINVAL`,
/// so the parser keeps the raw type until it has validated it.
package enum NBDCommand: UInt16, Sendable, CaseIterable, CustomStringConvertible {
    case read = 0
    case write = 1
    case disconnect = 2
    case flush = 3
    case trim = 4
    case cache = 5
    case writeZeroes = 6
    case blockStatus = 7

    package var description: String {
        switch self {
        case .read: "NBD_CMD_READ"
        case .write: "NBD_CMD_WRITE"
        case .disconnect: "NBD_CMD_DISC"
        case .flush: "NBD_CMD_FLUSH"
        case .trim: "NBD_CMD_TRIM"
        case .cache: "NBD_CMD_CACHE"
        case .writeZeroes: "NBD_CMD_WRITE_ZEROES"
        case .blockStatus: "NBD_CMD_BLOCK_STATUS"
        }
    }

    /// The command flags the spec documents for this command (FUA is valid on every command once
    /// negotiated; the others on one command each). Any other flag is `NBD_EINVAL`. Built from
    /// raw values: an option-set array literal allocates its array in debug builds, per request.
    @inline(__always)
    package var allowedFlags: NBDCommandFlags {
        let fua = NBDCommandFlags.fua.rawValue
        switch self {
        case .read: return NBDCommandFlags(rawValue: fua | NBDCommandFlags.dontFragment.rawValue)
        case .writeZeroes:
            return NBDCommandFlags(
                rawValue: fua | NBDCommandFlags.noHole.rawValue | NBDCommandFlags.fastZero.rawValue)
        case .blockStatus: return NBDCommandFlags(rawValue: fua | NBDCommandFlags.requestOne.rawValue)
        default: return NBDCommandFlags(rawValue: fua)
        }
    }
}
