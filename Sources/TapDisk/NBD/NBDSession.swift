/// What a client negotiated in the handshake and keeps for the whole transmission phase.
package struct NBDSession: Equatable, Sendable {
    /// `NBD_OPT_STRUCTURED_REPLY` was acknowledged: reads are answered with chunks, and
    /// `NBD_CMD_BLOCK_STATUS` and `NBD_CMD_FLAG_DF` become possible.
    package var structuredReplies: Bool
    /// The id `NBD_OPT_SET_META_CONTEXT` gave `base:allocation`, if the client selected it.
    package var allocationContext: UInt32?
    /// The flags this client was sent; the parser refuses a feature whose flag was clear.
    package var transmissionFlags: NBDTransmissionFlags
    /// Whether the client asked for `NBD_INFO_BLOCK_SIZE` in its `NBD_OPT_GO` (and so promised
    /// to keep to the minimum block size). Unaligned requests are refused either way; this is
    /// for `ctl status`.
    package var agreedBlockSize: Bool
    /// The export name the client used ("" for the default), for `ctl status`.
    package var exportName: String

    package init(
        structuredReplies: Bool, allocationContext: UInt32?, transmissionFlags: NBDTransmissionFlags,
        agreedBlockSize: Bool, exportName: String
    ) {
        self.structuredReplies = structuredReplies
        self.allocationContext = allocationContext
        self.transmissionFlags = transmissionFlags
        self.agreedBlockSize = agreedBlockSize
        self.exportName = exportName
    }
}
