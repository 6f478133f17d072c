import CLibAIO
import Glibc

/// Why a SET_MEM_TABLE was refused. The previous table (if any) stays in force.
package enum GuestMemoryError: Error, Equatable, Sendable {
    /// nregions and the fd count disagree, or there are none / more than 8.
    case badRegionCount(regions: Int, descriptors: Int)
    case emptyRegion(index: Int)
    /// guest_phys_addr + size, userspace_addr + size or mmap_offset + size wraps or exceeds Int.
    case addressOverflow(index: Int)
    /// Two regions overlap in guest-physical or in front-end user address space.
    case overlap(Int, Int)
    /// The fd is smaller than mmap_offset + size: touching the tail would SIGBUS the daemon.
    case fileTooSmall(index: Int, fileSize: UInt64)
    /// `requireShrinkSeal` was asked for and the fd lacks F_SEAL_SHRINK.
    case notSealedAgainstShrink(index: Int)
    case system(Errno)
}

/// One mapped region: where the guest and the front-end see it, and where we do.
package struct GuestMemoryRegion {
    package let guestPhysicalAddress: UInt64
    package let size: UInt64
    package let userAddress: UInt64
    /// The host address of guest_phys_addr (mapping base + mmap_offset).
    package let host: UnsafeMutableRawPointer
    /// The fd carries F_SEAL_SHRINK: the front-end cannot truncate the file under our mapping
    /// (which would turn our next access into SIGBUS). QEMU's memory-backend-memfd seals by
    /// default; file and hugetlbfs backends cannot.
    package let shrinkSealed: Bool
    fileprivate let mappingBase: UnsafeMutableRawPointer
    fileprivate let mappingLength: Int

    /// Overflow-safe: `address ..< address + length` lies inside `[start, start + size)`.
    @inline(__always)
    fileprivate static func offset(of address: UInt64, length: UInt64, start: UInt64, size: UInt64) -> UInt64? {
        guard address >= start else { return nil }
        let offset = address &- start
        guard offset < size, length <= size &- offset else { return nil }
        return offset
    }
}

/// The guest's RAM as the front-end's SET_MEM_TABLE describes it, mapped from the passed fds.
///
/// `~Copyable` sole owner of the mappings: dropping it unmaps everything (on RESET_OWNER, a new
/// table, or a disconnect). Anything holding pointers into guest RAM — `SplitVirtqueue`, iovecs
/// handed to the kernel — must be gone (or drained) before the owner is dropped.
///
/// A translated range must lie inside ONE region (`translate`); data descriptors that straddle
/// two regions adjacent in guest-physical space are split into several iovecs by the caller via
/// `contiguousPrefix`. Rings and indirect tables are never split: QEMU allocates them inside one
/// RAM block, and a table straddling a hole is refused.
package struct GuestMemory: ~Copyable {
    /// The regions in a buffer of our own: translation walks it with plain pointer reads (no
    /// array iteration, no retain/release, no allocation on the data path).
    private let table: UnsafeMutableBufferPointer<GuestMemoryRegion>

    /// The mapped regions (control plane and tests; this copies).
    package var regions: [GuestMemoryRegion] { Array(table) }

    /// No memory: every translation fails (the state before the first SET_MEM_TABLE).
    package init() { table = UnsafeMutableBufferPointer(start: nil, count: 0) }

    /// Validates the table, then maps every region shared and writable. `requireShrinkSeal`
    /// refuses fds a front-end could still truncate.
    package init(
        regions described: [VhostUserMemoryRegion], descriptors: borrowing ReceivedDescriptors,
        requireShrinkSeal: Bool = false
    ) throws(GuestMemoryError) {
        guard (1...VhostUserLimits.maxMemoryRegions).contains(described.count), descriptors.count == described.count
        else { throw .badRegionCount(regions: described.count, descriptors: descriptors.count) }
        for (i, r) in described.enumerated() {
            guard r.size > 0 else { throw .emptyRegion(index: i) }
            let (gEnd, o1) = r.guestPhysicalAddress.addingReportingOverflow(r.size)
            let (uEnd, o2) = r.userAddress.addingReportingOverflow(r.size)
            let (mapEnd, o3) = r.mmapOffset.addingReportingOverflow(r.size)
            guard !o1, !o2, !o3, mapEnd <= UInt64(Int.max) else { throw .addressOverflow(index: i) }
            _ = (gEnd, uEnd)
            for j in 0..<i {
                let s = described[j]
                if r.guestPhysicalAddress < s.guestPhysicalAddress + s.size && s.guestPhysicalAddress < gEnd {
                    throw .overlap(j, i)
                }
                if r.userAddress < s.userAddress + s.size && s.userAddress < uEnd { throw .overlap(j, i) }
            }
            var fileSize: UInt64 = 0
            let rc = clibaio_fd_size(descriptors.peek(i) ?? -1, &fileSize)
            guard rc == 0 else { throw .system(Errno(rawValue: -rc)) }
            guard fileSize >= mapEnd else { throw .fileTooSmall(index: i, fileSize: fileSize) }
            if requireShrinkSeal && !Self.shrinkSealed(descriptors.peek(i) ?? -1) {
                throw .notSealedAgainstShrink(index: i)
            }
        }
        var mapped: [GuestMemoryRegion] = []
        for (i, r) in described.enumerated() {
            let length = Int(r.mmapOffset + r.size)
            let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, descriptors.peek(i) ?? -1, 0)
            guard let p, p != MAP_FAILED else {
                let error = Errno.current
                for m in mapped { munmap(m.mappingBase, m.mappingLength) }
                throw .system(error)
            }
            mapped.append(
                GuestMemoryRegion(
                    guestPhysicalAddress: r.guestPhysicalAddress, size: r.size, userAddress: r.userAddress,
                    host: p + Int(r.mmapOffset), shrinkSealed: Self.shrinkSealed(descriptors.peek(i) ?? -1),
                    mappingBase: p, mappingLength: length))
        }
        table = .allocate(capacity: mapped.count)
        _ = table.initialize(from: mapped)
    }

    deinit {
        for i in 0..<table.count { munmap(table[i].mappingBase, table[i].mappingLength) }
        table.deallocate()
    }

    package var isEmpty: Bool { table.isEmpty }

    /// Every region is sealed against shrinking (false for an empty table).
    package var allShrinkSealed: Bool { !table.isEmpty && table.allSatisfy { $0.shrinkSealed } }

    private static func shrinkSealed(_ fd: Int32) -> Bool {
        let seals = clibaio_get_seals(fd)
        return seals >= 0 && seals & clibaio_F_SEAL_SHRINK != 0
    }

    /// The host address of guest-physical `[address, address + length)`, or nil unless the whole
    /// range lies inside one region. A zero length still requires `address` inside a region.
    @inline(__always)
    package func translate(guestPhysical address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        var i = 0
        while i < table.count {
            let r = table[i]
            if let off = GuestMemoryRegion.offset(
                of: address, length: length, start: r.guestPhysicalAddress, size: r.size)
            {
                return r.host + Int(off)
            }
            i += 1
        }
        return nil
    }

    /// The longest prefix of guest-physical `[address, address + length)` inside one region:
    /// its host address and byte count (≥ 1 when length ≥ 1), or nil when `address` is unmapped.
    @inline(__always)
    package func contiguousPrefix(
        guestPhysical address: UInt64, length: UInt64
    ) -> (host: UnsafeMutableRawPointer, count: UInt64)? {
        var i = 0
        while i < table.count {
            let r = table[i]
            if let off = GuestMemoryRegion.offset(of: address, length: 0, start: r.guestPhysicalAddress, size: r.size) {
                return (r.host + Int(off), min(length, r.size - off))
            }
            i += 1
        }
        return nil
    }

    /// The host address of front-end user range `[address, address + length)` (SET_VRING_ADDR's
    /// ring addresses), or nil unless it lies inside one region.
    package func translate(user address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        var i = 0
        while i < table.count {
            let r = table[i]
            if let off = GuestMemoryRegion.offset(of: address, length: length, start: r.userAddress, size: r.size) {
                return r.host + Int(off)
            }
            i += 1
        }
        return nil
    }
}
