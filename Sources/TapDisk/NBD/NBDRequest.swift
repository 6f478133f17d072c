/// A transmission request that passed `NBDRequestParser`: a known command, flags it may carry,
/// and a range inside the export, aligned to the minimum block size.
package struct NBDRequest: Equatable, Sendable {
    package var command: NBDCommand
    package var flags: NBDCommandFlags
    package var cookie: UInt64
    package var offset: UInt64
    package var length: UInt32

    package init(command: NBDCommand, flags: NBDCommandFlags, cookie: UInt64, offset: UInt64, length: UInt32) {
        self.command = command
        self.flags = flags
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }
}
