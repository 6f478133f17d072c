/// The information types of `NBD_REP_INFO` (answers to `NBD_OPT_INFO` and `NBD_OPT_GO`).
package enum NBDInfoType: UInt16, Sendable {
    /// Size and transmission flags; always sent, requested or not (the spec makes it mandatory).
    case export = 0
    case name = 1
    case description = 2
    /// Minimum, preferred and maximum block size; always sent too, because tapdiskd's minimum
    /// (the image's `O_DIRECT` alignment) is not the protocol's default of 1.
    case blockSize = 3
}
