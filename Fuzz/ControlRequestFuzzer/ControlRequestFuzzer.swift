import FuzzSupport
import TapDisk

/// libFuzzer target: one control-socket datagram, as any local client could send it.
///
/// Beyond "no crash": a datagram the strict parser accepts re-serializes to JSON that parses back
/// to the same value (so what the daemon echoes is what it read); `serializedSize` matches the
/// writer (the tag cap relies on it); the duplicate-reporting parser agrees with the strict one;
/// and an accepted request re-parses to the same command, tag and arguments.
func fuzzControlRequest(_ bytes: UnsafeRawBufferPointer) {
    let strict = try? JSONParser.parse(bytes)
    let reporting = try? JSONParser.parseReportingDuplicateKeys(bytes)
    if let strict {
        guard let reporting else { return fuzzCheck(false, "only the strict parser accepted") }
        fuzzCheck(reporting.firstDuplicateKeyOffset == nil, "strict parser accepted a duplicate key")
        fuzzCheck(reporting.value == strict, "the two parsers disagree")
        checkRoundTrip(strict)
    } else if let reporting {
        fuzzCheck(reporting.firstDuplicateKeyOffset != nil, "strict parser refused a document without duplicates")
    }

    switch ControlRequest.parse(bytes) {
    case .failure(let failure):
        if let tag = failure.tag { fuzzCheck(tag.isScalar, "a non-scalar tag was recovered") }
    case .success(let request):
        fuzzCheck(strict != nil, "a request was accepted that the strict parser refuses")
        if let tag = request.tag {
            fuzzCheck(tag.isScalar, "non-scalar tag accepted")
            fuzzCheck(JSONWriter.serializedSize(tag) <= ControlRequest.maxTagSize, "oversized tag accepted")
        }
        let again = JSONWriter.serialize(.object(request.arguments))
        guard again.count <= ControlRequest.maxDatagramSize else { return }
        guard case .success(let reparsed) = ControlRequest.parse(again) else {
            return fuzzCheck(false, "a re-serialized request no longer parses")
        }
        fuzzCheck(reparsed.command.utf8.elementsEqual(request.command.utf8), "command changed")
        fuzzCheck(reparsed.tag == request.tag, "tag changed")
        fuzzCheck(reparsed.arguments == request.arguments, "arguments changed")
        // The typed readers every handler uses, over whatever keys the request carries.
        for member in request.arguments.members {
            _ = try? request.integer(member.key, in: Int64.min...Int64.max)
            _ = try? request.integer(member.key, in: 0...4096)
            _ = try? request.bool(member.key)
            _ = try? request.string(member.key)
            if case .number(let n) = member.value { _ = (n.int64, n.uint64, n.double, n.isInteger) }
        }
    }
}

private func checkRoundTrip(_ value: JSONValue) {
    let text = JSONWriter.serialize(value)
    fuzzCheck(text.count == JSONWriter.serializedSize(value), "serializedSize disagrees with the writer")
    guard let back = try? JSONParser.parse(text) else {
        return fuzzCheck(false, "writer output does not parse: \(String(decoding: text, as: UTF8.self))")
    }
    fuzzCheck(back == value, "value changed across serialize/parse")
    fuzzCheck(JSONWriter.serialize(back) == text, "serialization is not a fixed point")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func controlRequestFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzControlRequest(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

@main enum ControlRequestFuzzer {
    static func main() {
        fuzzTargetMain("ControlRequestFuzzer", fuzzControlRequest, libFuzzerCallback: controlRequestFuzzerTestOneInput)
    }
}
