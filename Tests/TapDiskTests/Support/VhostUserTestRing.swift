import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// A split virtqueue in a memfd, written the way a guest driver (or a hostile one) would.
///
/// One region: guest-physical `base` = 0x100000, 1 MiB, front-end user address `userBase`.
/// Descriptor table at +0x0000, avail ring at +0x1000, used ring at +0x2000, indirect tables
/// from +0x4000, data from +0x10000.
struct VhostUserTestRing: ~Copyable {
    static let base: UInt64 = 0x10_0000
    static let bytes: UInt64 = 0x10_0000
    static let userBase: UInt64 = 0x7f12_0000_0000
    static let descOffset: UInt64 = 0
    static let availOffset: UInt64 = 0x1000
    static let usedOffset: UInt64 = 0x2000
    static let indirectOffset: UInt64 = 0x4000
    static let dataOffset: UInt64 = 0x1_0000
    static let allFeatures =
        VirtioFeatures.version1 | VirtioFeatures.ringEventIndex | VirtioFeatures.ringIndirectDescriptors

    static let N: UInt16 = 1
    static let W: UInt16 = 2
    static let I: UInt16 = 4

    let memory: GuestMemory
    let size: Int
    private(set) var availableIndex: UInt16 = 0

    init(size: Int) throws {
        memory = try VhostUserTest.guestMemory([
            VhostUserMemoryRegion(
                guestPhysicalAddress: Self.base, size: Self.bytes, userAddress: Self.userBase, mmapOffset: 0)
        ])
        self.size = size
    }

    /// The same layout over `fd`, a memfd of at least `bytes` that a front-end also hands to a
    /// daemon: both map it shared, so what the test writes here is what the daemon reads.
    init(size: Int, sharing fd: borrowing FileDescriptor) throws {
        let copy = try fd.duplicate()
        memory = try GuestMemory(regions: [Self.region], descriptors: ReceivedDescriptors(adopting: [copy.release()]))
        self.size = size
    }

    /// The one region every test ring lives in.
    static var region: VhostUserMemoryRegion {
        VhostUserMemoryRegion(guestPhysicalAddress: base, size: bytes, userAddress: userBase, mmapOffset: 0)
    }

    /// The host address of a guest-physical address inside the region.
    func host(_ gpa: UInt64) -> UnsafeMutableRawPointer { memory.translate(guestPhysical: gpa, length: 1)! }

    static func data(_ offset: UInt64) -> UInt64 { base + dataOffset + offset }
    static func indirect(_ offset: UInt64) -> UInt64 { base + indirectOffset + offset }

    var addresses: VhostUserVringAddress {
        VhostUserVringAddress(
            index: 0, flags: 0, descriptorTable: Self.userBase + Self.descOffset,
            usedRing: Self.userBase + Self.usedOffset, availableRing: Self.userBase + Self.availOffset)
    }

    func queue(
        features: UInt64 = allFeatures, lastAvailableIndex: UInt16 = 0, maxChainBytes: UInt64 = 1 << 20,
        maxIndirectEntries: Int = 1024, inflight: InflightQueue? = nil
    ) throws -> SplitVirtqueue {
        try SplitVirtqueue(
            size: UInt32(size), addresses: addresses, lastAvailableIndex: lastAvailableIndex, features: features,
            memory: memory,
            limits: VirtqueueLimits(maxChainBytes: maxChainBytes, maxIndirectEntries: maxIndirectEntries),
            inflight: inflight)
    }

    /// Writes descriptor `index` of the table at guest-physical `table` (default: the ring's).
    func setDescriptor(
        _ index: Int, address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0,
        table: UInt64 = base + descOffset
    ) {
        let p = host(table) + 16 * index
        p.storeBytes(of: address.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: length.littleEndian, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt16.self)
        p.storeBytes(of: next.littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    /// A virtio_blk_outhdr at `gpa`.
    func writeHeader(at gpa: UInt64, type: UInt32, sector: UInt64 = 0) {
        let p = host(gpa)
        p.storeBytes(of: type.littleEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
        p.storeBytes(of: sector.littleEndian, toByteOffset: 8, as: UInt64.self)
    }

    /// Makes `head` available (avail->ring[idx % size] = head, then avail->idx += 1).
    mutating func publish(_ head: UInt16) {
        let avail = host(Self.base + Self.availOffset)
        avail.storeBytes(of: head, toByteOffset: 4 + 2 * (Int(availableIndex) % size), as: UInt16.self)
        availableIndex &+= 1
        setAvailableIndex(availableIndex)
    }

    mutating func setAvailableIndex(_ value: UInt16) {
        availableIndex = value
        host(Self.base + Self.availOffset).storeBytes(of: value, toByteOffset: 2, as: UInt16.self)
    }

    func setAvailableFlags(_ value: UInt16) {
        host(Self.base + Self.availOffset).storeBytes(of: value, as: UInt16.self)
    }

    /// used_event (avail->ring[size]).
    func setUsedEvent(_ value: UInt16) {
        host(Self.base + Self.availOffset).storeBytes(of: value, toByteOffset: 4 + 2 * size, as: UInt16.self)
    }

    var usedIndex: UInt16 { host(Self.base + Self.usedOffset).load(fromByteOffset: 2, as: UInt16.self) }
    var usedFlags: UInt16 { host(Self.base + Self.usedOffset).load(as: UInt16.self) }

    func setUsedFlags(_ value: UInt16) {
        host(Self.base + Self.usedOffset).storeBytes(of: value, as: UInt16.self)
    }

    func setUsedIndex(_ value: UInt16) {
        host(Self.base + Self.usedOffset).storeBytes(of: value, toByteOffset: 2, as: UInt16.self)
    }

    /// avail_event (used->ring[size]).
    var availEvent: UInt16 {
        host(Self.base + Self.usedOffset).load(fromByteOffset: 4 + 8 * size, as: UInt16.self)
    }

    func usedElement(_ slot: Int) -> (id: UInt32, length: UInt32) {
        let p = host(Self.base + Self.usedOffset) + 4 + 8 * (slot % size)
        return (p.load(as: UInt32.self), p.load(fromByteOffset: 4, as: UInt32.self))
    }

    /// A standard three-descriptor request at descriptors `first`, `first+1`, `first+2`:
    /// header (readable), `dataLength` bytes of data (writable for reads), status (writable).
    func request(
        first: Int, type: UInt32, sector: UInt64 = 0, dataLength: UInt32 = 4096, dataOffset: UInt64 = 0
    ) {
        let header = Self.data(0x8_0000 + UInt64(first) * 32)
        writeHeader(at: header, type: type, sector: sector)
        let dataFlags: UInt16 = type == VirtioBlkType.read || type == VirtioBlkType.getID ? Self.W : 0
        setDescriptor(first, address: header, length: 16, flags: Self.N, next: UInt16(first + 1))
        setDescriptor(
            first + 1, address: Self.data(dataOffset), length: dataLength, flags: Self.N | dataFlags,
            next: UInt16(first + 2))
        setDescriptor(first + 2, address: header + 16, length: 1, flags: Self.W)
    }
}

extension VirtqueuePop {
    var chain: VirtqueueChain? {
        if case .chain(let c) = self { return c }
        return nil
    }

    var malformation: VirtqueueChainError? {
        if case .malformed(_, let e, _) = self { return e }
        return nil
    }

    var malformedStatus: UnsafeMutablePointer<UInt8>? {
        if case .malformed(_, _, let s) = self { return s }
        return nil
    }

    var fault: VirtqueueFault? {
        if case .broken(let f) = self { return f }
        return nil
    }

    var isEmpty: Bool {
        if case .empty = self { return true }
        return false
    }
}

/// iovec storage the tests hand to `pop`, freed at the end of the test.
final class IovecStorage {
    let buffer: UnsafeMutableBufferPointer<iovec>

    init(_ count: Int) {
        buffer = .allocate(capacity: count)
        buffer.initialize(repeating: iovec())
    }

    deinit { buffer.deallocate() }
}

extension VhostUserTestRing {
    /// A descriptor address a hostile guest might write: past 2^64, below or straddling the
    /// region, the indirect area, or plausible data (the random-ring suites share these).
    static func hostileAddress(_ rng: inout SplitMix) -> UInt64 {
        switch rng.next() % 8 {
        case 0: return UInt64.max - rng.next() % 64
        case 1: return rng.next() % base  // below the region
        case 2: return base + bytes - rng.next() % 64  // straddling the end
        case 3: return indirect(16 * (rng.next() % 4))  // the indirect area
        default: return data(rng.next() % 0x8_0000)
        }
    }

    /// A descriptor length a hostile guest might write.
    static func hostileLength(_ rng: inout SplitMix) -> UInt32 {
        switch rng.next() % 8 {
        case 0: return 0
        case 1: return 1
        case 2: return 16
        case 3: return UInt32.max - UInt32(rng.next() % 4)
        case 4: return 16 * UInt32(1 + rng.next() % 8)  // a plausible indirect table
        default: return UInt32(rng.next() % 0x4000)
        }
    }
}
