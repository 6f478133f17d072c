import Glibc

/// The NBD front's data buffers: one anonymous mapping cut into 128 KiB chunks, page-aligned
/// (so every chunk satisfies `O_DIRECT` whatever the sector size), handed out as a list of chunk
/// numbers per request and returned when its reply has been sent.
///
/// Allocated once when the daemon starts serving NBD, so no request allocates. The kernel backs
/// the mapping page by page on first touch, so the resident size follows the largest burst in
/// flight, not the pool's size. A request that finds too few chunks free waits (its connection
/// is not read further) until replies have been sent: back-pressure, never a failure.
package struct NBDBufferPool: ~Copyable {
    package static let chunkSize = 128 << 10
    /// A 32 MiB request takes this many chunks, which is also the engine's iovec room per record.
    package static let chunksPerMaximumRequest = Int(NBDExport.maximumPayload) / chunkSize

    package let base: UnsafeMutableRawPointer
    package let chunkCount: Int
    private let freeStack: UnsafeMutablePointer<UInt16>
    private(set) package var freeCount: Int

    /// `chunkCount` chunks (at least one maximum request's worth, at most 65536).
    package init(chunkCount: Int) throws(Errno) {
        precondition(chunkCount >= Self.chunksPerMaximumRequest && chunkCount <= 65536)
        let bytes = chunkCount * Self.chunkSize
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw Errno.current }
        base = p
        self.chunkCount = chunkCount
        freeStack = .allocate(capacity: chunkCount)
        for i in 0..<chunkCount { freeStack[i] = UInt16(chunkCount - 1 - i) }
        freeCount = chunkCount
    }

    deinit {
        munmap(base, chunkCount * Self.chunkSize)
        freeStack.deallocate()
    }

    /// Chunks needed for `bytes` (at least one, so a reply always has room for extents).
    @inline(__always)
    package static func chunks(for bytes: Int) -> Int { max(1, (bytes + chunkSize - 1) / chunkSize) }

    /// Takes `count` chunks into `list`, or none when fewer are free.
    @inline(__always)
    package mutating func allocate(_ count: Int, into list: UnsafeMutablePointer<UInt16>) -> Bool {
        guard count <= freeCount else { return false }
        for i in 0..<count {
            freeCount -= 1
            list[i] = freeStack[freeCount]
        }
        return true
    }

    @inline(__always)
    package mutating func release(_ count: Int, from list: UnsafeMutablePointer<UInt16>) {
        for i in 0..<count {
            freeStack[freeCount] = list[i]
            freeCount += 1
        }
    }

    @inline(__always)
    package func address(of chunk: UInt16) -> UnsafeMutableRawPointer { base + Int(chunk) * Self.chunkSize }
}
