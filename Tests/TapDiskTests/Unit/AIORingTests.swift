import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// `aio_ring.c`: reaping from the ring the kernel maps (what makes polling syscall-free), checked
/// on hand-built rings for the wrap, the batch limit and a corrupt ring (which must be refused,
/// not followed), and on a real context for support.
@Suite struct AIORingTests {
    /// A ring of `nr` events laid out like the kernel's `struct aio_ring`, event `i` carrying data `i`.
    final class FakeRing {
        let memory: UnsafeMutableRawPointer
        let nr: UInt32
        init(nr: UInt32, head: UInt32, tail: UInt32, magic: UInt32 = 0xa10a_10a1, incompat: UInt32 = 0) {
            self.nr = nr
            memory = .allocate(byteCount: 32 + Int(nr) * 32, alignment: 64)
            memory.initializeMemory(as: UInt8.self, repeating: 0, count: 32 + Int(nr) * 32)
            for (i, v) in [0, nr, head, tail, magic, 0, incompat, 32].enumerated() {
                memory.storeBytes(of: v, toByteOffset: 4 * i, as: UInt32.self)
            }
            for i in 0..<Int(nr) { memory.storeBytes(of: UInt64(i), toByteOffset: 32 + 32 * i, as: UInt64.self) }
        }
        deinit { memory.deallocate() }
        var context: io_context_t { OpaquePointer(memory) }
        var head: UInt32 { memory.load(fromByteOffset: 8, as: UInt32.self) }
    }

    func reap(_ ring: FakeRing, max: Int) -> (Int32, [UInt64]) {
        let events = UnsafeMutablePointer<io_event>.allocate(capacity: max)
        defer { events.deallocate() }
        let n = clibaio_user_reap(ring.context, max, events)
        return (n, n > 0 ? (0..<Int(n)).map { clibaio_event_data(events + $0) } : [])
    }

    /// The C functions on a ring kept alive for the call (a temporary `FakeRing`
    /// can be freed as soon as `.context` is read, before the C function reads the memory:
    /// ASan reported that use after free).
    func supported(_ ring: FakeRing) -> Int32 {
        withExtendedLifetime(ring) { clibaio_user_reap_supported(ring.context) }
    }

    func pending(_ ring: FakeRing) -> Int32 {
        withExtendedLifetime(ring) { clibaio_user_pending(ring.context) }
    }

    @Test func supportIsJudgedFromTheHeader() {
        #expect(supported(FakeRing(nr: 4, head: 0, tail: 0)) == 1)
        #expect(supported(FakeRing(nr: 4, head: 0, tail: 0, magic: 1)) == 0)
        #expect(supported(FakeRing(nr: 4, head: 0, tail: 0, incompat: 1)) == 0)
    }

    @Test func reapsAcrossTheWrapInOrderAndMovesHead() {
        let ring = FakeRing(nr: 4, head: 3, tail: 1)
        #expect(pending(ring) == 1)
        let (n, data) = reap(ring, max: 8)
        #expect(n == 2 && data == [3, 0])
        #expect(ring.head == 1 && pending(ring) == 0)
        #expect(reap(ring, max: 8).0 == 0)
    }

    @Test func reapsAtMostMax() {
        let ring = FakeRing(nr: 8, head: 0, tail: 5)
        let (n, data) = reap(ring, max: 2)
        #expect(n == 2 && data == [0, 1] && ring.head == 2)
        #expect(pending(ring) == 1)
    }

    @Test func aCorruptRingIsRefused() {
        #expect(reap(FakeRing(nr: 4, head: 7, tail: 1), max: 8).0 == -EINVAL)
        #expect(reap(FakeRing(nr: 4, head: 0, tail: 4), max: 8).0 == -EINVAL)
    }

    @Test func theKernelsRingIsReadable() throws {
        let context = try AIOContext(capacity: 32)
        let readable = context.userReap
        let pending = context.hasCompletions
        #expect(readable, "this kernel's AIO ring cannot be read from user space: polling would cost syscalls")
        #expect(!pending)
    }
}
