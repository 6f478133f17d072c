/// The option types of the fixed-newstyle handshake. A value outside this list is still
/// answered (`NBD_REP_ERR_UNSUP`), so the handshake keeps the raw number, not this enum.
package enum NBDOption: UInt32, Sendable, CaseIterable {
    case exportName = 1
    case abort = 2
    case list = 3
    case peekExport = 4
    case startTLS = 5
    case info = 6
    case go = 7
    case structuredReply = 8
    case listMetaContext = 9
    case setMetaContext = 10
    case extendedHeaders = 11
}
