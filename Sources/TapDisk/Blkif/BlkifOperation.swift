/// Request operations of docs/protocol.md §4.1. The raw byte is what the frontend wrote; anything
/// outside this set is answered EOPNOTSUPP.
package enum BlkifOperation: UInt8, Sendable, CaseIterable {
    case read = 0
    case write = 1
    case writeBarrier = 2
    case flushDiskCache = 3
    case discard = 5
    case indirect = 6
}

/// Response status values (§4.1); the guest can be told nothing finer.
package enum BlkifStatus: Int16, Sendable {
    case okay = 0
    case error = -1
    case notSupported = -2
}
