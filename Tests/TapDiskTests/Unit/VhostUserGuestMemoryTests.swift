import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// SET_MEM_TABLE validation, mapping through real memfds, and overflow-safe translation.
@Suite struct VhostUserGuestMemoryTests {
    typealias T = VhostUserTest
    typealias R = VhostUserMemoryRegion

    static let low = R(guestPhysicalAddress: 0, size: 0xa0000, userAddress: 0x7f00_0000_0000, mmapOffset: 0)
    static let high = R(
        guestPhysicalAddress: 0xc0000, size: 0x40000, userAddress: 0x7f00_000c_0000, mmapOffset: 0xc0000)

    private func refusal(_ regions: [R], fileBytes: [Int]? = nil) -> GuestMemoryError? {
        do {
            var raw: [Int32] = []
            for (i, r) in regions.enumerated() {
                let bytes = fileBytes?[i] ?? Int(min(r.mmapOffset &+ r.size, 1 << 20))
                raw.append(try T.memfd(bytes: bytes).release())
            }
            _ = try GuestMemory(regions: regions, descriptors: ReceivedDescriptors(adopting: raw))
            return nil
        } catch let e as GuestMemoryError {
            return e
        } catch {
            return .system(Errno(rawValue: EIO))
        }
    }

    @Test func translatesInsideOneRegionOnly() throws {
        let memory = try T.guestMemory([Self.low, Self.high])
        let t1 = memory.translate(guestPhysical: 0, length: 1)

        let lowBase = try #require(t1)
        #expect(memory.translate(guestPhysical: 0x1000, length: 16) == lowBase + 0x1000)
        // The last byte of a region, and one past it.
        #expect(memory.translate(guestPhysical: 0x9ffff, length: 1) == lowBase + 0x9ffff)
        #expect(memory.translate(guestPhysical: 0x9ffff, length: 2) == nil)
        #expect(memory.translate(guestPhysical: 0xa0000, length: 1) == nil)  // the hole
        // High region: guest 0xc0000 is mmap_offset 0xc0000 into its own fd.
        let t2 = memory.translate(guestPhysical: 0xc0000, length: 0x40000)

        let highBase = try #require(t2)
        #expect(memory.translate(guestPhysical: 0xc0000, length: 0x40001) == nil)
        #expect(memory.translate(guestPhysical: 0x100000, length: 0) == nil)
        #expect(highBase != lowBase)
    }

    @Test func overflowingRangesNeverTranslate() throws {
        // The highest region a table may describe ends below 2^64 (one ending at 2^64 is refused).
        let start: UInt64 = 0xffff_ffff_ffff_e000
        let top = R(guestPhysicalAddress: start, size: 0x1000, userAddress: 0x1000, mmapOffset: 0)
        let memory = try T.guestMemory([Self.low, top])
        #expect(memory.translate(guestPhysical: start + 0xfff, length: 1) != nil)
        #expect(memory.translate(guestPhysical: start + 0xfff, length: 2) == nil)
        #expect(memory.translate(guestPhysical: start, length: UInt64.max) == nil)
        #expect(memory.translate(guestPhysical: UInt64.max, length: 1) == nil)
        #expect(memory.translate(guestPhysical: 0x10, length: UInt64.max - 0x8) == nil)
        #expect(memory.contiguousPrefix(guestPhysical: start + 0xfff, length: UInt64.max)?.count == 1)
        #expect(memory.translate(user: 0x1000, length: 0x1000) != nil)
        #expect(memory.translate(user: 0x1fff, length: UInt64.max) == nil)
        #expect(
            refusal([R(guestPhysicalAddress: UInt64.max - 0xfff, size: 0x1000, userAddress: 0, mmapOffset: 0)])
                == .addressOverflow(index: 0))
    }

    @Test func prefixSplitsAtTheRegionEdge() throws {
        let a = R(guestPhysicalAddress: 0x10000, size: 0x1000, userAddress: 0x50000, mmapOffset: 0)
        let b = R(guestPhysicalAddress: 0x11000, size: 0x1000, userAddress: 0x90000, mmapOffset: 0x2000)
        let memory = try T.guestMemory([a, b])
        #expect(memory.translate(guestPhysical: 0x10ff0, length: 0x20) == nil)  // spans two mappings
        let t3 = memory.contiguousPrefix(guestPhysical: 0x10ff0, length: 0x20)

        let first = try #require(t3)
        #expect(first.count == 0x10)
        let t4 = memory.contiguousPrefix(guestPhysical: 0x11000, length: 0x10)

        let second = try #require(t4)
        #expect(second.count == 0x10 && second.host == memory.translate(guestPhysical: 0x11000, length: 1))
        #expect(memory.contiguousPrefix(guestPhysical: 0x12000, length: 1) == nil)
    }

    @Test func userAddressesTranslateToTheSameBytes() throws {
        let memory = try T.guestMemory([Self.low, Self.high])
        #expect(
            memory.translate(user: 0x7f00_000c_0010, length: 8) == memory.translate(guestPhysical: 0xc0010, length: 8))
        #expect(memory.translate(user: 0x7f00_000a_0000, length: 1) == nil)
        #expect(memory.translate(user: 0xc0010, length: 8) == nil)  // a guest address is not a user address
    }

    @Test func mmapOffsetSelectsTheFileRange() throws {
        let fd = try T.memfd(bytes: 0x3000)
        let marker: [UInt8] = [0xde, 0xad, 0xbe, 0xef]
        _ = marker.withUnsafeBytes { pwrite(fd.rawValue, $0.baseAddress, 4, 0x2000) }
        let raw = T.highDuplicate(fd)
        let memory = try GuestMemory(
            regions: [R(guestPhysicalAddress: 0x4000, size: 0x1000, userAddress: 0, mmapOffset: 0x2000)],
            descriptors: ReceivedDescriptors(adopting: [raw]))
        let t5 = memory.translate(guestPhysical: 0x4000, length: 4)

        let p = try #require(t5)
        #expect(Array(UnsafeRawBufferPointer(start: p, count: 4)) == marker)
        // Shared: our writes land in the file the front-end passed.
        p.storeBytes(of: 0x42, as: UInt8.self)
        var back: UInt8 = 0
        _ = pread(fd.rawValue, &back, 1, 0x2000)
        #expect(back == 0x42)
        #expect(!T.isOpen(raw))  // the received fd is closed once mapped (the mapping stays)
    }

    @Test func hostileTablesAreRefused() {
        #expect(refusal([]) == .badRegionCount(regions: 0, descriptors: 0))
        #expect(refusal(Array(repeating: Self.low, count: 9)) == .badRegionCount(regions: 9, descriptors: 9))
        #expect(refusal([R(guestPhysicalAddress: 0, size: 0, userAddress: 0, mmapOffset: 0)]) == .emptyRegion(index: 0))
        #expect(
            refusal([R(guestPhysicalAddress: UInt64.max, size: 2, userAddress: 0, mmapOffset: 0)])
                == .addressOverflow(index: 0))
        #expect(
            refusal([R(guestPhysicalAddress: 0, size: 0x1000, userAddress: UInt64.max - 1, mmapOffset: 0)])
                == .addressOverflow(index: 0))
        #expect(
            refusal([R(guestPhysicalAddress: 0, size: 0x1000, userAddress: 0, mmapOffset: UInt64.max - 1)])
                == .addressOverflow(index: 0))
        let overlapping = R(guestPhysicalAddress: 0x9f000, size: 0x2000, userAddress: 0x1_0000_0000, mmapOffset: 0)
        #expect(refusal([Self.low, overlapping]) == .overlap(0, 1))
        let aliasing = R(
            guestPhysicalAddress: 0x1_0000_0000, size: 0x1000, userAddress: 0x7f00_0000_0000, mmapOffset: 0)
        #expect(refusal([Self.low, aliasing]) == .overlap(0, 1))
        // A file shorter than mmap_offset + size would SIGBUS on first touch.
        #expect(refusal([Self.high], fileBytes: [0xc0000 + 0x3ffff]) == .fileTooSmall(index: 0, fileSize: 0xfffff))
    }

    @Test func shrinkSealsAreReportedAndCanBeRequired() throws {
        let region = R(guestPhysicalAddress: 0, size: 0x1000, userAddress: 0, mmapOffset: 0)
        let sealed = FileDescriptor(
            adopting: try Errno.check(
                clibaio_memfd_create("vhost-sealed", clibaio_MFD_CLOEXEC | clibaio_MFD_ALLOW_SEALING)))
        #expect(ftruncate(sealed.rawValue, 0x1000) == 0)
        _ = try Errno.check(clibaio_add_seals(sealed.rawValue, clibaio_F_SEAL_SHRINK | clibaio_F_SEAL_GROW))
        let memory = try GuestMemory(
            regions: [region], descriptors: ReceivedDescriptors(adopting: [T.highDuplicate(sealed)]),
            requireShrinkSeal: true)
        #expect(memory.allShrinkSealed && memory.regions[0].shrinkSealed)

        let plain = try T.memfd(bytes: 0x1000)
        let unsealed = try GuestMemory(
            regions: [region], descriptors: ReceivedDescriptors(adopting: [T.highDuplicate(plain)]))
        #expect(unsealed.allShrinkSealed == false)
        #expect(throws: GuestMemoryError.notSealedAgainstShrink(index: 0)) {
            _ = try GuestMemory(
                regions: [region], descriptors: ReceivedDescriptors(adopting: [T.highDuplicate(plain)]),
                requireShrinkSeal: true)
        }
    }

    @Test func descriptorCountMustMatch() throws {
        let fd = try T.memfd(bytes: 0x1000)
        let raw = T.highDuplicate(fd)
        #expect(throws: GuestMemoryError.badRegionCount(regions: 2, descriptors: 1)) {
            _ = try GuestMemory(regions: [Self.low, Self.high], descriptors: ReceivedDescriptors(adopting: [raw]))
        }
        #expect(!T.isOpen(raw))
    }

    @Test func droppingTheOwnerUnmaps() throws {
        var memory = try T.guestMemory([Self.low])
        let mapped: UnsafeMutableRawPointer? = memory.translate(guestPhysical: 0, length: 1)
        let pointer: UnsafeMutableRawPointer = try #require(mapped)
        let base = UInt(bitPattern: pointer)
        #expect(Self.isMapped(base))
        memory = GuestMemory()
        #expect(!Self.isMapped(base))
        #expect(memory.translate(guestPhysical: 0, length: 1) == nil)
    }

    /// Whether a mapping starts at `address` (from /proc/self/maps).
    static func isMapped(_ address: UInt) -> Bool {
        guard let f = fopen("/proc/self/maps", "r") else { return false }
        defer { fclose(f) }
        let prefix = String(address, radix: 16) + "-"
        var line = [CChar](repeating: 0, count: 512)
        while fgets(&line, Int32(line.count), f) != nil {
            if String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).hasPrefix(prefix)
            {
                return true
            }
        }
        return false
    }
}
