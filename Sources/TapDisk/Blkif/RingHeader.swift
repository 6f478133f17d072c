import Synchronization

/// Atomic access to the four u32 header fields of a mapped ring.
///
/// The header lives in memory the other side writes concurrently, so every access is a single
/// aligned 32-bit atomic (§4.1): never a plain load the compiler could split, repeat or cache.
package struct RingHeader {
    package let base: UnsafeMutableRawPointer

    package init(base: UnsafeMutableRawPointer) { self.base = base }

    @inline(__always)
    private func field(_ offset: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (base + offset).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    @inline(__always) package func loadAcquiring(_ offset: Int) -> UInt32 {
        field(offset).pointee.load(ordering: .acquiring)
    }

    @inline(__always) package func loadRelaxed(_ offset: Int) -> UInt32 {
        field(offset).pointee.load(ordering: .relaxed)
    }

    @inline(__always) package func storeReleasing(_ offset: Int, _ value: UInt32) {
        field(offset).pointee.store(value, ordering: .releasing)
    }

    @inline(__always) package func storeRelaxed(_ offset: Int, _ value: UInt32) {
        field(offset).pointee.store(value, ordering: .relaxed)
    }

    /// The full fence of Xen's `mb()` between publishing an index and re-reading the peer's event.
    @inline(__always) package static func fullFence() {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    package var reqProd: UInt32 { loadAcquiring(RingLayout.reqProdOffset) }
    package var rspProd: UInt32 { loadAcquiring(RingLayout.rspProdOffset) }
    package var reqEvent: UInt32 { loadAcquiring(RingLayout.reqEventOffset) }
    package var rspEvent: UInt32 { loadAcquiring(RingLayout.rspEventOffset) }
}
