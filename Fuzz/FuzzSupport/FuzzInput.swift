/// A cursor over the fuzzer's bytes: fixed-width fields are taken little-endian, and a read past
/// the end yields zeros, so every input (however short) decodes to *some* case instead of being
/// thrown away, which keeps libFuzzer's mutations productive.
package struct FuzzInput {
    package let bytes: UnsafeRawBufferPointer
    package private(set) var position = 0

    package init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    package var remaining: Int { bytes.count - position }

    /// The next `T`, zero-extended when fewer than `MemoryLayout<T>.size` bytes are left.
    package mutating func take<T: FixedWidthInteger>(_: T.Type = T.self) -> T {
        var value: T = 0
        let n = min(MemoryLayout<T>.size, remaining)
        withUnsafeMutableBytes(of: &value) { dst in
            if n > 0 { dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[position..<position + n])) }
        }
        position += n
        return T(littleEndian: value)
    }

    /// The next `count` bytes (fewer at the end of the input).
    package mutating func take(bytes count: Int) -> UnsafeRawBufferPointer {
        let n = max(0, min(count, remaining))
        defer { position += n }
        return UnsafeRawBufferPointer(rebasing: bytes[position..<position + n])
    }

    /// Everything not taken yet.
    package mutating func rest() -> UnsafeRawBufferPointer { take(bytes: remaining) }
}

/// An invariant the code under test must keep. Unlike `assert`, it is checked in every build,
/// and it aborts so that libFuzzer records the input as a crash.
package func fuzzCheck(
    _ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String, file: StaticString = #file,
    line: UInt = #line
) {
    if !condition() { fatalError("fuzz invariant violated: \(message())", file: file, line: line) }
}
