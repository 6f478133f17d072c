/// Validates a decoded request header against the export and what the client negotiated.
///
/// The checks follow the spec's "Error values" section: an unknown command or a flag not
/// documented for the command is `NBD_EINVAL`; a write, trim or write-zeroes on a read-only
/// export is `NBD_EPERM`; a write or write-zeroes past the end is `NBD_ENOSPC` and any other
/// request past the end `NBD_EINVAL`; a range not aligned to the minimum block size is
/// `NBD_EINVAL`; a read longer than the maximum payload is `NBD_EINVAL`. Only a bad magic and a
/// write too long to skip end the connection. No allocation, no syscall: it runs per request,
/// and it keeps only numbers (not the export's name), so copying it costs no reference counting.
package struct NBDRequestParser: Sendable {
    package let size: UInt64
    package let minimumBlockSize: UInt32
    package let readOnly: Bool
    package let canTrim: Bool
    package let structuredReplies: Bool
    package let hasAllocationContext: Bool
    package let transmissionFlags: NBDTransmissionFlags

    package init(export: NBDExport, session: NBDSession) {
        size = export.size
        minimumBlockSize = export.minimumBlockSize
        readOnly = export.readOnly
        canTrim = export.canTrim
        structuredReplies = session.structuredReplies
        hasAllocationContext = session.allocationContext != nil
        transmissionFlags = session.transmissionFlags
    }

    package func decide(_ header: NBDRequestHeader) -> NBDRequestDecision {
        guard header.magic == NBDMagic.request else { return .violation(.badMagic(header.magic)) }
        if header.type == NBDCommand.write.rawValue && header.length > NBDExport.maximumPayload {
            return .violation(.payloadTooLarge(header.length))
        }
        func refuse(_ error: NBDError) -> NBDRequestDecision { .refuse(cookie: header.cookie, error: error) }
        guard let command = NBDCommand(rawValue: header.type) else { return refuse(.invalid) }
        guard flagsAllowed(header.flags, for: command) else { return refuse(.invalid) }
        let request = NBDRequest(
            command: command, flags: header.flags, cookie: header.cookie, offset: header.offset, length: header.length)
        switch command {
        case .disconnect:
            return .disconnect
        case .flush:
            // Offset and length are reserved for a flush; clients that set them are not refused.
            return .execute(request)
        case .write, .trim, .writeZeroes:
            if readOnly { return refuse(.permission) }
            if command != .write && !canTrim { return refuse(.invalid) }
        case .blockStatus:
            guard structuredReplies, hasAllocationContext, header.length > 0 else { return refuse(.invalid) }
        case .read:
            if header.length > NBDExport.maximumPayload { return refuse(.invalid) }
        case .cache:
            break
        }
        let (end, overflow) = header.offset.addingReportingOverflow(UInt64(header.length))
        if overflow || end > size {
            return refuse(command == .write || command == .writeZeroes ? .noSpace : .invalid)
        }
        let mask = UInt64(minimumBlockSize - 1)
        if header.offset & mask != 0 || UInt64(header.length) & mask != 0 && end != size {
            return refuse(.invalid)
        }
        return .execute(request)
    }

    /// Flags documented for `command`, and only those whose transmission flag this client was sent.
    private func flagsAllowed(_ flags: NBDCommandFlags, for command: NBDCommand) -> Bool {
        guard command.allowedFlags.isSuperset(of: flags) else { return false }
        let sent = transmissionFlags
        if flags.contains(.fua) && !sent.contains(.sendFUA) { return false }
        if flags.contains(.dontFragment) && !sent.contains(.sendDF) { return false }
        if flags.contains(.fastZero) && !sent.contains(.sendFastZero) { return false }
        return true
    }
}
