import FuzzSupport
import TapDisk

/// libFuzzer target: one vhost-user message as a hostile front-end could send it.
///
/// Input: the 12-byte header, one control byte (bits 0-3: how many fds "arrived", mod 9; bit 4:
/// overwrite the header's size with the payload's real length, so mutations reach the payload
/// checks instead of dying at the size match), then the payload. The fds are -1 placeholders:
/// `ReceivedDescriptors` counts them like real ones and closes nothing, so no syscall per input.
///
/// Beyond "no crash": a header that passes `check` obeys the size bound; a message that passes
/// `init` decodes through its own accessor without error and agrees with its fd count.
func fuzzVhostMessage(_ data: UnsafeRawBufferPointer) {
    var input = FuzzInput(data)
    var header = VhostUserHeader(
        request: input.take(UInt32.self), flags: input.take(UInt32.self), size: input.take(UInt32.self))
    let control: UInt8 = input.take()
    let payload = Array(input.rest())
    if control & 0x10 != 0 { header.size = UInt32(payload.count) }
    let fdCount = Int(control & 0x0f) % (VhostUserLimits.maxMemoryRegions + 1)

    var encoded: [UInt8] = []
    header.append(to: &encoded)
    let decoded = encoded.withUnsafeBytes { VhostUserHeader(bytes: $0) }
    fuzzCheck(decoded == header, "header does not round-trip")

    let checked: VhostUserRequest
    do {
        checked = try VhostUserMessage.check(header: header)
    } catch {
        return
    }
    fuzzCheck(header.size <= UInt32(VhostUserLimits.maxPayload), "size \(header.size) passed check")
    fuzzCheck(header.flags & VhostUserHeader.replyFlag == 0, "a reply passed check")

    let descriptors = ReceivedDescriptors(adopting: [Int32](repeating: -1, count: fdCount))
    guard let message = try? VhostUserMessage(header: header, payload: payload, descriptors: descriptors) else {
        return
    }
    fuzzCheck(message.request == checked, "init and check disagree on the request")
    fuzzCheck(message.payload.count == Int(header.size), "payload size not enforced")
    if case .exactly(let n) = message.request.payloadRule {
        fuzzCheck(message.payload.count == n, "payload rule not enforced")
    }
    switch message.request {
    case .setMemTable:
        do {
            let regions = try message.memoryRegions()
            fuzzCheck((1...VhostUserLimits.maxMemoryRegions).contains(regions.count), "\(regions.count) regions")
            fuzzCheck(regions.count == message.descriptors.count, "regions and fds disagree")
        } catch {
            fuzzCheck(false, "memoryRegions threw \(error)")
        }
    case .getConfig, .setConfig:
        do {
            let access = try message.configAccess()
            fuzzCheck(access.bytes.count == Int(access.size), "config bytes and size disagree")
            fuzzCheck(access.size <= UInt32(VhostUserLimits.maxConfigSize), "config size \(access.size)")
        } catch {
            fuzzCheck(false, "configAccess threw \(error)")
        }
    case .setVringNum, .setVringBase, .getVringBase, .setVringEnable:
        fuzzCheck((try? message.vringState()) != nil, "vringState threw")
    case .setVringAddr:
        fuzzCheck((try? message.vringAddress()) != nil, "vringAddress threw")
    case .setVringKick, .setVringCall, .setVringErr:
        guard let file = try? message.vringFile() else { return fuzzCheck(false, "vringFile threw") }
        fuzzCheck(file.hasDescriptor == (message.descriptors.count == 1), "no-fd bit and fd count disagree")
        fuzzCheck((try? message.u64()) != nil, "u64 threw")
    default:
        if message.request.payloadRule == .exactly(8) { fuzzCheck((try? message.u64()) != nil, "u64 threw") }
    }
    // Every accessor of another kind refuses instead of reading out of bounds.
    _ = try? message.memoryRegions()
    _ = try? message.configAccess()
    _ = try? message.vringState()
    _ = try? message.vringAddress()
    _ = try? message.vringFile()
    _ = try? message.u64()
}

@_cdecl("LLVMFuzzerTestOneInput")
public func vhostMessageFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzVhostMessage(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

@main enum VhostMessageFuzzer {
    static func main() {
        fuzzTargetMain("VhostMessageFuzzer", fuzzVhostMessage, libFuzzerCallback: vhostMessageFuzzerTestOneInput)
    }
}
