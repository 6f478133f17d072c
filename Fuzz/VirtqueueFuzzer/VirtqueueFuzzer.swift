import CLibAIO
import FuzzSupport
import Glibc
import TapDisk

/// libFuzzer target: a split virtqueue whose descriptor table, avail ring and surrounding guest
/// memory are written by a hostile guest, popped by `SplitVirtqueue` and judged by
/// `VirtioBlkRequest.classify`.
///
/// Input: 8 bytes of setup (queue size, features, last_avail_idx, limits, iovec capacity, pop
/// count, disk shape), then avail->idx, the avail ring, the descriptor table, and the rest as a
/// blob at `blobOffset` (a place for indirect tables and request headers). The first pops can
/// only reach memory the fuzzer wrote: the guest is two adjacent memfd regions (so a buffer can
/// straddle them) cleared before every input.
///
/// Beyond "no crash": every iovec, header and status pointer `pop` returns lies inside guest
/// memory and the caller's storage; byte counts add up and respect the chain limit; every head
/// taken completes exactly once; a fault is sticky; a classified read/write/discard lies inside
/// the disk.
enum Guest {
    static let regionBytes: UInt64 = 0x1_0000
    static let base: UInt64 = 0x1_0000
    static let userBase: UInt64 = 0x7f00_0000_0000
    static let availOffset = 0x1000
    static let usedOffset = 0x2000
    static let blobOffset = 0x4000
    static let maxSegments = 8

    /// Built once: a memfd and two mmaps per input would dominate the run time.
    nonisolated(unsafe) static let holder = Holder()
    nonisolated(unsafe) static let storage: UnsafeMutableBufferPointer<iovec> = {
        let s = UnsafeMutableBufferPointer<iovec>.allocate(capacity: maxSegments)
        s.initialize(repeating: iovec())
        return s
    }()

    final class Holder {
        let memory: GuestMemory
        /// Host ranges of the regions, for the containment checks.
        let ranges: [Range<UInt>]

        init() {
            let regions = (0..<2).map { i in
                VhostUserMemoryRegion(
                    guestPhysicalAddress: base + UInt64(i) * regionBytes, size: regionBytes,
                    userAddress: userBase + UInt64(i) * regionBytes, mmapOffset: 0)
            }
            let fds = regions.map { _ in
                let fd = clibaio_memfd_create("virtqueue-fuzz", clibaio_MFD_CLOEXEC)
                precondition(fd >= 0 && ftruncate(fd, off_t(regionBytes)) == 0, "memfd")
                return fd
            }
            memory = try! GuestMemory(regions: regions, descriptors: ReceivedDescriptors(adopting: fds))
            ranges = memory.regions.map { r in
                let low = UInt(bitPattern: r.host)
                return low..<low + UInt(r.size)
            }
        }

        func contains(_ p: UnsafeRawPointer, _ count: Int) -> Bool {
            let low = UInt(bitPattern: p)
            return ranges.contains { $0.contains(low) && UInt(count) <= $0.upperBound - low }
        }
    }
}

func fuzzVirtqueue(_ data: UnsafeRawBufferPointer) {
    let guest = Guest.holder
    var input = FuzzInput(data)
    let size = 1 << Int(input.take(UInt8.self) % 5)
    let featureBits: UInt8 = input.take()
    let lastAvailable: UInt16 = input.take()
    let limitBits: UInt8 = input.take()
    let capacity = 1 + Int(input.take(UInt8.self)) % Guest.maxSegments
    let pops = 1 + Int(input.take(UInt8.self) % 4)
    let diskBits: UInt8 = input.take()

    let host = guest.memory.translate(guestPhysical: Guest.base, length: Guest.regionBytes)!
    for r in guest.memory.regions { memset(r.host, 0, Int(r.size)) }
    func place(_ offset: Int, _ count: Int) {
        let bytes = input.take(bytes: count)
        if !bytes.isEmpty { (host + offset).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
    }
    place(Guest.availOffset + 2, 2 + 2 * size + 2)  // idx, ring[size], used_event
    place(0, 16 * size)  // the descriptor table
    place(Guest.blobOffset, min(input.remaining, Int(Guest.regionBytes) - Guest.blobOffset))

    var features: UInt64 = VirtioFeatures.version1
    if featureBits & 1 != 0 { features |= VirtioFeatures.ringEventIndex }
    if featureBits & 2 != 0 { features |= VirtioFeatures.ringIndirectDescriptors }
    let limits = VirtqueueLimits(
        maxChainBytes: 1 << (4 + UInt64(limitBits & 0x0f)), maxIndirectEntries: 1 + Int(limitBits >> 4) * 4)
    let addresses = VhostUserVringAddress(
        index: 0, flags: 0, descriptorTable: Guest.userBase, usedRing: Guest.userBase + UInt64(Guest.usedOffset),
        availableRing: Guest.userBase + UInt64(Guest.availOffset))
    var queue: SplitVirtqueue
    do {
        queue = try SplitVirtqueue(
            size: UInt32(size), addresses: addresses, lastAvailableIndex: lastAvailable, features: features,
            memory: guest.memory, limits: limits)
    } catch {
        return fuzzCheck(false, "a well-placed ring was refused: \(error)")
    }
    let disk = VirtioBlkDisk(
        capacitySectors: 2048, blockSize: diskBits & 1 != 0 ? 4096 : 512, readOnly: diskBits & 2 != 0,
        discard: diskBits & 4 != 0, maxDiscardSectors: 64, maxWriteZeroesSectors: 128)
    let storage = UnsafeMutableBufferPointer(rebasing: Guest.storage[0..<capacity])

    var broken: VirtqueueFault?
    for _ in 0..<pops {
        let result = queue.pop(into: storage, memory: guest.memory)
        if let broken {
            guard case .broken(let again) = result, again == broken else { return fuzzCheck(false, "fault not sticky") }
        }
        switch result {
        case .empty:
            break
        case .broken(let fault):
            broken = fault
        case .malformed(let head, _, let status):
            if let status { fuzzCheck(guest.contains(status, 1), "status byte outside guest memory") }
            fuzzCheck(queue.complete(head: head, writtenBytes: 0), "malformed head \(head) was not in flight")
        case .chain(let chain):
            check(chain, storage: storage, limits: limits, guest: guest)
            judge(VirtioBlkRequest.classify(chain, storage: storage, disk: disk), chain, disk)
            fuzzCheck(queue.complete(head: chain.head, writtenBytes: 1), "head \(chain.head) was not in flight")
            fuzzCheck(!queue.complete(head: chain.head, writtenBytes: 1), "head \(chain.head) completed twice")
        }
        _ = queue.shouldNotify()
    }
    fuzzCheck(queue.inFlight == 0, "\(queue.inFlight) heads left in flight")
    _ = queue.enableNotifications()
}

private func check(
    _ chain: VirtqueueChain, storage: UnsafeMutableBufferPointer<iovec>, limits: VirtqueueLimits,
    guest: Guest.Holder
) {
    fuzzCheck(chain.segmentCount <= storage.count, "more segments than storage")
    fuzzCheck(guest.contains(chain.status, 1), "status byte outside guest memory")
    var readable: UInt64 = 0
    var writable: UInt64 = 0
    for i in 0..<chain.segmentCount {
        let v = storage[i]
        guard let base = v.iov_base else { return fuzzCheck(false, "nil iovec base") }
        fuzzCheck(v.iov_len > 0, "empty iovec")
        fuzzCheck(guest.contains(base, v.iov_len), "iovec \(i) outside guest memory")
        // No disjointness check: a guest may alias its own buffers (the status descriptor over
        // the data, see Fuzz/Corpus/VirtqueueFuzzer/status-aliases-data); it only hurts itself.
        if i < chain.readableSegments { readable += UInt64(v.iov_len) } else { writable += UInt64(v.iov_len) }
    }
    fuzzCheck(readable == chain.readableBytes && writable == chain.writableBytes, "byte counts do not add up")
    fuzzCheck(16 + readable + writable + 1 <= limits.maxChainBytes, "chain limit exceeded")
}

private func judge(_ request: VirtioBlkRequest, _ chain: VirtqueueChain, _ disk: VirtioBlkDisk) {
    func inside(_ sector: UInt64, _ sectors: UInt64) -> Bool {
        sectors > 0 && sector < disk.capacitySectors && sectors <= disk.capacitySectors - sector
    }
    switch request {
    case .read(let sector, let bytes):
        fuzzCheck(bytes == chain.writableBytes && chain.readableBytes == 0, "read direction")
        fuzzCheck(bytes % UInt64(disk.blockSize) == 0 && inside(sector, bytes / 512), "read outside the disk")
    case .write(let sector, let bytes):
        fuzzCheck(!disk.readOnly && bytes == chain.readableBytes && chain.writableBytes == 0, "write direction")
        fuzzCheck(bytes % UInt64(disk.blockSize) == 0 && inside(sector, bytes / 512), "write outside the disk")
    case .discard(let sector, let sectors), .writeZeroes(let sector, let sectors, _):
        fuzzCheck(disk.discard && !disk.readOnly, "discard on a disk without it")
        fuzzCheck(inside(sector, UInt64(sectors)), "discard outside the disk")
    case .getID(let bytes):
        fuzzCheck(bytes == chain.writableBytes && bytes > 0, "get-id size")
    case .flush, .reject:
        break
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func virtqueueFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzVirtqueue(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

@main enum VirtqueueFuzzer {
    static func main() {
        fuzzTargetMain("VirtqueueFuzzer", fuzzVirtqueue, libFuzzerCallback: virtqueueFuzzerTestOneInput)
    }
}
