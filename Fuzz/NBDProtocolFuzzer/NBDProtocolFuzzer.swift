import FuzzSupport
import TapDisk

/// libFuzzer target: what an NBD client sends, to the handshake state machine and to the
/// transmission request parser.
///
/// Input: one control byte. Bit 0 clear: handshake. Bits 1-2 pick the export (read-only, 4096-byte
/// sectors) and bits 3-4 the availability; the next byte is a chunk size; the rest is what the
/// client sends, fed once whole and once in chunks. Bit 0 set: requests. Bits 1-7 pick the export
/// and session; a u64 export size follows; the rest is a stream of 28-byte headers.
///
/// Beyond "no crash": the handshake's output and outcome do not depend on how the bytes were
/// split; every byte it sends parses as well-formed server messages; a session's DF and
/// metadata context appear only with structured replies. An executed request is a known
/// command with documented flags, inside the export, aligned, and not a write on a read-only
/// export; a write longer than 32 MiB is a violation, never executed or refused.
func fuzzNBD(_ data: UnsafeRawBufferPointer) {
    var input = FuzzInput(data)
    let control: UInt8 = input.take()
    if control & 1 == 0 {
        fuzzHandshake(control: control, input: &input)
    } else {
        fuzzRequests(control: control, input: &input)
    }
}

private func export(_ control: UInt8, size: UInt64 = 1 << 30) -> NBDExport {
    NBDExport(
        name: "disk", size: size, minimumBlockSize: control & 4 != 0 ? 4096 : 512, readOnly: control & 2 != 0)
}

private func fuzzHandshake(control: UInt8, input: inout FuzzInput) {
    let availability: NBDHandshake.Availability =
        switch (control >> 3) & 3 {
        case 1: .refused("busy")
        case 2: .shuttingDown
        default: .available
        }
    let chunk = max(1, Int(input.take() as UInt8))
    let bytes = input.rest()
    let whole = run(NBDHandshake(export: export(control)), bytes, chunk: bytes.count + 1, availability)
    let split = run(NBDHandshake(export: export(control)), bytes, chunk: chunk, availability)
    fuzzCheck(whole.output == split.output, "output depends on how the input was split")
    fuzzCheck(whole.outcome == split.outcome && whole.consumed == split.consumed, "outcome depends on the split")
    checkServerStream(whole.output, outcome: whole.outcome)
    if case .transmission(let session) = whole.outcome {
        fuzzCheck(availability == .available, "transmission while \(availability)")
        fuzzCheck(session.structuredReplies || !session.transmissionFlags.contains(.sendDF), "DF without structured")
        fuzzCheck(session.structuredReplies || session.allocationContext == nil, "context without structured")
    }
}

private func run(
    _ start: NBDHandshake, _ bytes: UnsafeRawBufferPointer, chunk: Int, _ availability: NBDHandshake.Availability
) -> (output: [UInt8], outcome: NBDHandshake.Outcome, consumed: Int) {
    var handshake = start
    var output: [UInt8] = []
    handshake.greeting(into: &output)
    var position = 0
    while position < bytes.count {
        let end = min(bytes.count, position + chunk)
        let (consumed, outcome) = handshake.feed(
            UnsafeRawBufferPointer(rebasing: bytes[position..<end]), availability: availability, output: &output)
        fuzzCheck(consumed <= end - position, "consumed more than it was given")
        if outcome != .pending { return (output, outcome, position + consumed) }
        fuzzCheck(consumed == end - position, "stopped early while pending")
        position += consumed
    }
    return (output, .pending, position)
}

/// The greeting, then option replies (each: magic, option, type, length, payload), then for an
/// `NBD_OPT_EXPORT_NAME` transmission the 10- or 134-byte export answer.
private func checkServerStream(_ output: [UInt8], outcome: NBDHandshake.Outcome) {
    let stream = output[...]
    fuzzCheck(NBDWire.read(UInt64.self, from: stream, at: 0) == NBDMagic.server, "greeting magic")
    var offset = NBDHandshake.greetingLength
    while offset < output.count {
        guard NBDWire.read(UInt64.self, from: stream, at: offset) == NBDMagic.optionReply else {
            // Only the export-name answer may follow the replies.
            let tail = output.count - offset
            fuzzCheck(tail == 10 || tail == 134, "\(tail) stray bytes after the option replies")
            if case .transmission = outcome {} else { fuzzCheck(false, "export answer without transmission") }
            return
        }
        let length = NBDWire.read(UInt32.self, from: stream, at: offset + 16)
        fuzzCheck(length != nil, "truncated option reply header")
        offset += 20 + Int(length!)
        fuzzCheck(offset <= output.count, "option reply length past the end")
    }
}

private func fuzzRequests(control: UInt8, input: inout FuzzInput) {
    let size = (input.take() as UInt64) % (1 << 44)
    let e = export(control, size: size)
    let structured = control & 8 != 0
    let session = NBDSession(
        structuredReplies: structured, allocationContext: structured && control & 16 != 0 ? 1 : nil,
        transmissionFlags: e.transmissionFlags(structuredReplies: structured), agreedBlockSize: true, exportName: "")
    let parser = NBDRequestParser(export: e, session: session)
    var scratch = [UInt8](repeating: 0, count: 64)
    while input.remaining >= NBDRequestHeader.byteCount {
        let header = NBDRequestHeader(bytes: input.take(bytes: NBDRequestHeader.byteCount))
        var encoded: [UInt8] = []
        header.append(to: &encoded)
        fuzzCheck(encoded.withUnsafeBytes { NBDRequestHeader(bytes: $0) } == header, "header does not round-trip")
        switch parser.decide(header) {
        case .execute(let r):
            fuzzCheck(header.magic == NBDMagic.request, "bad magic executed")
            fuzzCheck(r.command.allowedFlags.isSuperset(of: r.flags), "undocumented flag executed")
            fuzzCheck(!(e.readOnly && [.write, .trim, .writeZeroes].contains(r.command)), "write on read-only")
            if r.command != .flush {
                let (end, overflow) = r.offset.addingReportingOverflow(UInt64(r.length))
                fuzzCheck(!overflow && end <= e.size, "range past the export")
                fuzzCheck(r.offset % UInt64(e.minimumBlockSize) == 0, "unaligned offset")
                fuzzCheck(UInt64(r.length) % UInt64(e.minimumBlockSize) == 0 || end == e.size, "unaligned length")
            }
            if r.command == .read || r.command == .write { fuzzCheck(r.length <= NBDExport.maximumPayload, "too long") }
            if r.command == .blockStatus { fuzzCheck(session.allocationContext != nil, "status without context") }
        case .refuse(let cookie, let error):
            fuzzCheck(cookie == header.cookie, "refusal with another cookie")
            fuzzCheck(header.payloadLength <= NBDExport.maximumPayload, "refused a write it cannot skip")
            let n = scratch.withUnsafeMutableBytes {
                NBDReplyEncoder.failure(cookie: cookie, error: error, structured: structured, at: $0.baseAddress!)
            }
            fuzzCheck(n <= scratch.count, "reply overran its room")
        case .disconnect:
            fuzzCheck(header.type == NBDCommand.disconnect.rawValue, "disconnect for another command")
        case .violation(let v):
            switch v {
            case .badMagic(let m): fuzzCheck(m == header.magic && m != NBDMagic.request, "bad-magic mismatch")
            case .payloadTooLarge(let n): fuzzCheck(n > NBDExport.maximumPayload, "violation for a small write")
            }
            return
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func nbdProtocolFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzNBD(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

@main enum NBDProtocolFuzzer {
    static func main() {
        fuzzTargetMain("NBDProtocolFuzzer", fuzzNBD, libFuzzerCallback: nbdProtocolFuzzerTestOneInput)
    }
}
