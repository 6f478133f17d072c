import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// The guest driver's half of the split ring for the property test
/// (`VhostUserDaemonPropertyTests`), over a `VhostUserTestFrontend`: descriptors and data
/// buffers allocated and freed per chain as a driver does, chains laid out in the ways virtio
/// allows (direct or through an indirect table, the header split over two descriptors, the status
/// byte sharing a descriptor with read data, buffers at any byte address), kicks only when
/// avail_event asks for them and interrupts only through used_event, as with EVENT_IDX a Linux
/// guest does. The daemon's notification suppression is then part of what the test checks: a
/// kick or interrupt it forgets to ask for shows up as a request that never completes.
final class VhostUserChainDriver {
    typealias Ring = VhostUserTestRing

    /// A guest buffer: one descriptor's worth of data.
    struct Segment {
        var gpa: UInt64
        var length: Int
    }

    /// What a posted chain holds on to until its used entry frees it.
    struct Chain {
        var head: UInt16
        var descriptors: [UInt16]
        var units: [Range<Int>]
        var statusGPA: UInt64
        var indirect = false
    }

    /// One descriptor of a chain before it is placed.
    struct Piece {
        var gpa: UInt64
        var length: Int
        var writable: Bool
    }

    let frontend: VhostUserTestFrontend
    let queueSize: Int
    /// Entries in each head's private indirect table (the indirect area split by head).
    let indirectEntries: Int
    private var freeDescriptors: [UInt16]
    /// 512-byte units of guest memory for data, outside the ring, tables and headers.
    private var unitFree: [Bool]
    private var unitCursor = 0
    /// Data offset of the second range, past the header area (`headerAddress`).
    private let highBase: UInt64
    private(set) var freeUnits: Int
    /// avail->idx as of the last kick decision.
    private var lastKickIndex: UInt16
    private(set) var kicks = 0
    private(set) var skippedKicks = 0

    static let unitBytes = 512
    /// The first data range ends where the front-end's header area starts.
    static let lowUnits = 0x8_0000 / unitBytes

    /// A driver for `frontend`'s ring, which is set up (avail->idx where it starts).
    init(_ frontend: VhostUserTestFrontend) {
        self.frontend = frontend
        lastKickIndex = frontend.ring.availableIndex
        queueSize = frontend.queueSize
        indirectEntries = Int(Ring.dataOffset - Ring.indirectOffset) / 16 / queueSize
        freeDescriptors = (0..<UInt16(queueSize)).reversed().map { $0 }
        let highStart = 0x8_0000 + ((queueSize * 32 + 0xFFF) & ~0xFFF)
        let units = Self.lowUnits + (Int(Ring.bytes - Ring.dataOffset) - highStart) / Self.unitBytes
        unitFree = [Bool](repeating: true, count: units)
        freeUnits = units
        highBase = UInt64(highStart)
    }

    /// The guest-physical address of data unit `u` (two ranges around the header area).
    func unitAddress(_ u: Int) -> UInt64 {
        u < Self.lowUnits
            ? Ring.data(UInt64(u * Self.unitBytes)) : Ring.data(highBase + UInt64((u - Self.lowUnits) * Self.unitBytes))
    }

    var freeDescriptorCount: Int { freeDescriptors.count }

    // MARK: - Buffers

    /// `count` contiguous units (never straddling the two ranges), or nil when memory is short.
    func allocateUnits(_ count: Int) -> Range<Int>? {
        let n = unitFree.count
        var start = unitCursor
        var scanned = 0
        while scanned < n {
            if start + count > n {
                scanned += n - start
                start = 0
                continue
            }
            let end = start + count
            if start < Self.lowUnits && end > Self.lowUnits {
                scanned += Self.lowUnits - start
                start = Self.lowUnits
                continue
            }
            if let busy = (start..<end).last(where: { !unitFree[$0] }) {
                scanned += busy + 1 - start
                start = busy + 1
                continue
            }
            for u in start..<end { unitFree[u] = false }
            freeUnits -= count
            unitCursor = end % n
            return start..<end
        }
        return nil
    }

    func release(_ chain: Chain) {
        freeDescriptors.append(contentsOf: chain.descriptors)
        for r in chain.units {
            for u in r { unitFree[u] = true }
            freeUnits += r.count
        }
    }

    /// A buffer of `length` bytes starting `offset` bytes into fresh units.
    func buffer(length: Int, offset: Int = 0, into units: inout [Range<Int>]) -> Segment? {
        guard let r = allocateUnits((offset + length + Self.unitBytes - 1) / Self.unitBytes) else { return nil }
        units.append(r)
        return Segment(gpa: unitAddress(r.lowerBound) + UInt64(offset), length: length)
    }

    func host(_ gpa: UInt64) -> UnsafeMutableRawPointer { frontend.ring.host(gpa) }

    /// The bytes of `segments` in order.
    func gather(_ segments: [Segment]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(segments.reduce(0) { $0 + $1.length })
        for s in segments { out += UnsafeRawBufferPointer(start: host(s.gpa), count: s.length) }
        return out
    }

    /// Writes `bytes` across `segments` in order.
    func scatter(_ bytes: [UInt8], into segments: [Segment]) {
        var at = 0
        bytes.withUnsafeBytes { src in
            for s in segments {
                host(s.gpa).copyMemory(from: src.baseAddress! + at, byteCount: s.length)
                at += s.length
            }
        }
    }

    // MARK: - Chains

    static func headerAddress(_ head: UInt16) -> UInt64 { VhostUserTestFrontend.headerAddress(Int(head)) }

    /// Places a chain: the 16-byte header (at the head's header slot, written here; split over two
    /// descriptors when `splitHeader`), `pieces`, then the status byte in its own descriptor
    /// unless `statusAt` is given (the last byte of the last writable piece). Direct chains take
    /// `2 + pieces` descriptors from the table, indirect ones one; a direct chain the table has
    /// no room for goes indirect. Returns nil, with nothing taken, when it fits neither way. The
    /// status byte is set to the sentinel.
    func place(
        type: UInt32, sector: UInt64, pieces: [Piece], indirect wanted: Bool, splitHeader: Bool, statusAt: UInt64?,
        units: [Range<Int>]
    ) -> Chain? {
        let count = (splitHeader ? 2 : 1) + pieces.count + (statusAt == nil ? 1 : 0)
        let indirect = wanted || freeDescriptors.count < count
        let take = indirect ? 1 : count
        guard freeDescriptors.count >= take, !indirect || count <= indirectEntries else { return nil }
        let taken = (0..<take).map { _ in freeDescriptors.removeLast() }
        let head = taken[0]
        let header = Self.headerAddress(head)
        frontend.ring.writeHeader(at: header, type: type, sector: sector)
        var all: [Piece] = []
        if splitHeader {
            let cut = 1 + Int(head) % 15
            all += [Piece(gpa: header, length: cut, writable: false)]
            all += [Piece(gpa: header + UInt64(cut), length: 16 - cut, writable: false)]
        } else {
            all += [Piece(gpa: header, length: 16, writable: false)]
        }
        all += pieces
        let status = statusAt ?? header + 16
        if statusAt == nil { all.append(Piece(gpa: status, length: 1, writable: true)) }
        frontend.setStatus(at: status, VhostUserTestFrontend.sentinel)
        let table = indirect ? Ring.indirect(UInt64(Int(head) * indirectEntries * 16)) : Ring.base + Ring.descOffset
        for (i, p) in all.enumerated() {
            let last = i == all.count - 1
            let index = indirect ? i : Int(taken[i])
            let next = last ? 0 : (indirect ? UInt16(i + 1) : taken[i + 1])
            let flags = (last ? 0 : Ring.N) | (p.writable ? Ring.W : 0)
            frontend.ring.setDescriptor(
                index, address: p.gpa, length: UInt32(p.length), flags: flags, next: next, table: table)
        }
        if indirect {
            frontend.ring.setDescriptor(Int(head), address: table, length: UInt32(16 * all.count), flags: Ring.I)
        }
        return Chain(head: head, descriptors: taken, units: units, statusGPA: status, indirect: indirect)
    }

    /// Makes `head` available without kicking (`kickIfNeeded` decides).
    func publish(_ head: UInt16) { frontend.publish([head], kick: false) }

    /// Kicks when avail_event asks for it (vring_need_event over the entries published since the
    /// last decision), or always with `force` (a spurious kick, which must be harmless).
    func kickIfNeeded(force: Bool = false) {
        let new = frontend.ring.availableIndex
        clibaio_fence_seq_cst()
        let event = frontend.ring.availEvent
        let needed = new &- event &- 1 < new &- lastKickIndex
        lastKickIndex = new
        if needed || force {
            kicks += 1
            frontend.kick()
        } else {
            skippedKicks += 1
        }
    }

    // MARK: - Used entries

    /// Asks for an interrupt at the next used entry and waits up to `milliseconds` for it.
    /// Returns whether the wait ended without one (used entries may still have arrived: the
    /// caller reads the ring either way).
    func waitForInterrupt(milliseconds: Int32) -> Bool {
        frontend.ring.setUsedEvent(frontend.seenUsed)
        clibaio_fence_seq_cst()
        if frontend.ring.usedIndex != frontend.seenUsed { return false }
        var p = pollfd(fd: frontend.callFD.rawValue, events: Int16(POLLIN), revents: 0)
        let woke = poll(&p, 1, milliseconds) > 0
        if woke { frontend.callFD.drain() }
        return !woke
    }

    /// Whether the call eventfd fires within `milliseconds` (used_event left as it is).
    func interruptArrives(milliseconds: Int32) -> Bool {
        var p = pollfd(fd: frontend.callFD.rawValue, events: Int16(POLLIN), revents: 0)
        let woke = poll(&p, 1, milliseconds) > 0
        if woke { frontend.callFD.drain() }
        return woke
    }

    /// capacity (sectors), blk_size, max_discard_sectors and max_write_zeroes_sectors from
    /// GET_CONFIG (the front-end's own read stops at seg_max).
    static func readConfig(_ frontend: VhostUserTestFrontend) throws -> (
        capacity: UInt64, blockSize: UInt32, maxDiscard: UInt32, maxWriteZeroes: UInt32
    ) {
        let size: UInt32 = 52
        try frontend.send(
            .getConfig,
            payload: VhostUserTest.le(UInt32(0)) + VhostUserTest.le(size) + VhostUserTest.le(UInt32(0))
                + [UInt8](repeating: 0, count: Int(size)))
        let p = try frontend.reply(to: .getConfig)
        guard p.count == 12 + Int(size) else { throw VhostUserTestFrontend.Failure("GET_CONFIG: \(p.count) bytes") }
        let c = Array(p[12...])
        return (
            VhostUserTestFrontend.u64(c, 0), VhostUserTestFrontend.u32(c, 20), VhostUserTestFrontend.u32(c, 36),
            VhostUserTestFrontend.u32(c, 48)
        )
    }
}
