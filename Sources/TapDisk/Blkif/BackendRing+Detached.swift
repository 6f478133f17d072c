extension BackendRing {
    /// A placeholder while nothing is attached, so the engine's ring need not be optional on the
    /// hot path; the engine reads it only behind `isAttached`.
    static var detached: BackendRing {
        BackendRing(base: detachedHeader, pageOrder: 0)
    }
}

/// A zeroed 64-byte block (the header's size, one cache line) standing in for a ring header
/// while detached.
private nonisolated(unsafe) let detachedHeader: UnsafeMutableRawPointer = {
    let p = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
    p.initializeMemory(as: UInt8.self, repeating: 0, count: 64)
    return p
}()
