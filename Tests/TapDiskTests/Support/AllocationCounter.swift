import Glibc
import Synchronization

// A malloc counter without an interposer library, shared by the allocation suites
// (AllocationTests, VhostUserAllocationTests, VhostUserEngineAllocationTests).
//
// The test executable defines `malloc`, `calloc`, `realloc`, `posix_memalign`, `aligned_alloc`
// and `memalign` itself. A definition in the executable interposes on glibc's for the whole
// process (libswiftCore's `swift_slowAlloc` and libc's own callers bind to it through the PLT),
// and each one forwards to glibc's implementation under its `__libc_*` name, so the allocator
// stays glibc's and `free` needs no wrapper. Only calls made on the thread that armed the
// counter are counted: swift-testing runs other tests concurrently on other threads, and the
// engine and frontend under test are single-threaded by design. The counter itself never
// allocates (two atomics, `pthread_self`).

@_silgen_name("__libc_malloc") private func libcMalloc(_ size: Int) -> UnsafeMutableRawPointer?
@_silgen_name("__libc_calloc") private func libcCalloc(_ n: Int, _ size: Int) -> UnsafeMutableRawPointer?
@_silgen_name("__libc_realloc") private func libcRealloc(_ p: UnsafeMutableRawPointer?, _ size: Int)
    -> UnsafeMutableRawPointer?
@_silgen_name("__libc_memalign") private func libcMemalign(_ alignment: Int, _ size: Int) -> UnsafeMutableRawPointer?

private let countedThread = Atomic<UInt>(0)
private let countedAllocations = Atomic<Int>(0)

@inline(__always)
private func noteAllocation() {
    let t = countedThread.load(ordering: .relaxed)
    if t != 0 && t == UInt(pthread_self()) {
        countedAllocations.wrappingAdd(1, ordering: .relaxed)
    }
}

// Not compiled under a sanitizer (scripts/test.sh --sanitize): ASan and TSan define malloc
// themselves, and these tests skip (Support/Sanitizer.swift).
#if !TAPDISK_SANITIZER
    @_cdecl("malloc")
    func countingMalloc(_ size: Int) -> UnsafeMutableRawPointer? {
        noteAllocation()
        return libcMalloc(size)
    }

    @_cdecl("calloc")
    func countingCalloc(_ n: Int, _ size: Int) -> UnsafeMutableRawPointer? {
        noteAllocation()
        return libcCalloc(n, size)
    }

    @_cdecl("realloc")
    func countingRealloc(_ p: UnsafeMutableRawPointer?, _ size: Int) -> UnsafeMutableRawPointer? {
        noteAllocation()
        return libcRealloc(p, size)
    }

    @_cdecl("memalign")
    func countingMemalign(_ alignment: Int, _ size: Int) -> UnsafeMutableRawPointer? {
        noteAllocation()
        return libcMemalign(alignment, size)
    }

    @_cdecl("aligned_alloc")
    func countingAlignedAlloc(_ alignment: Int, _ size: Int) -> UnsafeMutableRawPointer? {
        noteAllocation()
        return libcMemalign(alignment, size)
    }

    @_cdecl("posix_memalign")
    func countingPosixMemalign(_ out: UnsafeMutablePointer<UnsafeMutableRawPointer?>, _ alignment: Int, _ size: Int)
        -> Int32
    {
        noteAllocation()
        guard alignment >= MemoryLayout<UnsafeRawPointer>.size, alignment & (alignment - 1) == 0 else { return EINVAL }
        guard let p = libcMemalign(alignment, size) else { return ENOMEM }
        out.pointee = p
        return 0
    }
#endif

/// Whether this process's allocations really go through the counting functions. They do only
/// when the test executable exports them (`-Xlinker --export-dynamic`, see scripts/alloc.sh):
/// without that, libswiftCore and libc bind to glibc's malloc directly and only calls made from
/// this module would be seen, which would make every count a false zero.
let mallocCounterActive: Bool = !Sanitizer.active && countAllocations { runtimeAllocation() } == 1

/// One allocation made by libswiftCore (`swift_slowAlloc` → malloc), which the optimizer cannot
/// remove or promote to the stack.
@inline(never)
func runtimeAllocation() {
    let p = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
    p.storeBytes(of: 1, as: Int.self)
    p.deallocate()
}

@inline(never)
func blackHole<T>(_ value: T) { withExtendedLifetime(value) {} }

/// Counts heap allocations made by `body` on the calling thread.
func countAllocations(_ body: () throws -> Void) rethrows -> Int {
    countedAllocations.store(0, ordering: .relaxed)
    countedThread.store(UInt(pthread_self()), ordering: .relaxed)
    defer { countedThread.store(0, ordering: .relaxed) }
    try body()
    return countedAllocations.load(ordering: .relaxed)
}
