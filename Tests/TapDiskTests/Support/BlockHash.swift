/// FNV-1a of a block: what the property suites (in-process and through the daemon) keep per
/// block of their model instead of the data, to check every OKAY read against the last write.
enum BlockHash {
    static func of(_ p: UnsafeRawPointer, _ n: Int) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in 0..<n {
            h ^= UInt64(p.load(fromByteOffset: i, as: UInt8.self))
            h &*= 0x100_0000_01b3
        }
        return h
    }

    /// The hash of a 4 KiB block of zeros (a hole, or a discarded block).
    static let zeros: UInt64 = {
        let p = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 8)
        defer { p.deallocate() }
        p.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        return of(p, 4096)
    }()
}
