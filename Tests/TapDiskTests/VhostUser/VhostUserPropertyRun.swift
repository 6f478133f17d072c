import Glibc
import Testing

@testable import TapDisk

/// The random request stream of `VhostUserDaemonPropertyTests` and its shadow model: what each
/// posted head asked for, what its status byte and used length may be, and what every sector of
/// the disk must read back. Requests in flight never overlap (`busy`), so each OK answer moves
/// the model to exactly one state; a failed WRITE (or DISCARD) leaves its sectors "don't care"
/// until an OK one covers them again, because a failed request's range is undefined (§5.2).
final class VhostUserPropertyRun {
    typealias Driver = VhostUserChainDriver
    typealias Segment = Driver.Segment

    enum Expect: Equatable {
        case undefined
        case zeros
        case content(UInt64)
    }

    enum Kind: String {
        case read = "READ"
        case write = "WRITE"
        case flush = "FLUSH"
        case discard = "DISCARD"
        case writeZeroes = "WRITE_ZEROES"
        case getID = "GET_ID"
        case unsupported = "unknown type or flags"
        case beyondCapacity = "beyond capacity"
    }

    struct Pending {
        var number: Int
        var kind: Kind
        var chain: Driver.Chain
        /// The sectors it touches (empty for FLUSH, GET_ID and rejected chains).
        var sectors: Range<Int> = 0..<0
        /// READ/WRITE data or GET_ID's buffer.
        var segments: [Segment] = []
        /// WRITE: the hash of each sector written.
        var hashes: [UInt64] = []
        var detail = ""
        /// FLUSH posted after a FLUSH was seen failing: must fail too (docs/operations.md).
        var afterFailedFlush = false
    }

    let driver: Driver
    let capacity: Int
    let blockSectors: Int
    let maxRangeSectors: Int
    let seed: UInt64
    var rng: SplitMix
    var model: [Expect]
    var busy: [Bool]
    var pending: [UInt16: Pending] = [:]
    /// Requests of each kind posted, and answers by status byte.
    var posted: [Kind: Int] = [:]
    var statuses: [UInt8: Int] = [:]
    var okWrites = 0
    var okReads = 0
    /// Sectors OK READs compared with the model (undefined ones are not).
    var checkedSectors = 0
    var failedWrites = 0
    var failedFlushes = 0
    var indirect = 0
    var misaligned = 0
    var flushFailed = false
    /// Every chain through an indirect table, as a Linux guest posts them: one descriptor of the
    /// table per chain, so the pipeline can fill the whole queue.
    var allIndirect = false
    var answered = 0

    static let serial = Array("tapdiskd".utf8)
    static let unknownTypes: [UInt32] = [2, 3, 5, 6, 7, 9, 10, 12, 14, 15, 16, 0x8000_0001, 0x1234_5678]

    init(driver: Driver, capacity: Int, blockSize: Int, maxRangeSectors: Int, seed: UInt64, initial: [Expect]) {
        self.driver = driver
        self.capacity = capacity
        blockSectors = blockSize / 512
        self.maxRangeSectors = maxRangeSectors
        self.seed = seed
        rng = SplitMix(seed: seed)
        model = initial
        busy = [Bool](repeating: false, count: capacity)
    }

    /// Hash of one 512-byte sector, a word at a time.
    static func hash(_ p: UnsafeRawPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in 0..<64 {
            h = (h ^ p.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)) &* 0x100_0000_01b3
            h ^= h >> 29
        }
        return h
    }

    static func hashes(_ bytes: [UInt8]) -> [UInt64] {
        bytes.withUnsafeBytes { b in (0..<(b.count / 512)).map { hash(b.baseAddress! + 512 * $0) } }
    }

    static let zeroHash = hashes([UInt8](repeating: 0, count: 512))[0]

    private func random(_ n: Int) -> Int { Int(rng.next() % UInt64(max(n, 1))) }

    /// A block-aligned start for `sectors` inside the disk; one in twenty ends exactly at capacity.
    private func start(_ sectors: Int) -> Int {
        if random(20) == 0 { return capacity - sectors }
        return random((capacity - sectors) / blockSectors + 1) * blockSectors
    }

    private func isFree(_ r: Range<Int>) -> Bool { !r.contains { busy[$0] } }

    // MARK: - The stream

    /// The next request, placed in the ring but not yet published; nil when the sectors it drew
    /// are busy or the ring or the data memory is short (the caller reaps and tries again).
    func next(number: Int) -> Pending? {
        let roll = random(100)
        let useIndirect = random(3) == 0 || allIndirect
        let split = random(10) == 0
        var p: Pending?
        switch roll {
        case 0..<30: p = readOrWrite(write: false, indirect: useIndirect, split: split)
        case 30..<62: p = readOrWrite(write: true, indirect: useIndirect, split: split)
        case 62..<70:
            p = place(.flush, type: VirtioBlkType.flush, pieces: [], units: [], indirect: useIndirect, split: split)
            p?.afterFailedFlush = flushFailed
        case 70..<84: p = range(roll < 76 ? .discard : .writeZeroes, indirect: useIndirect, split: split)
        case 84..<87: p = getID(indirect: useIndirect, split: split)
        case 87..<92: p = unsupported(indirect: useIndirect, split: split)
        default: p = beyondCapacity(indirect: useIndirect, split: split)
        }
        guard var p else { return nil }
        p.number = number
        for s in p.sectors { busy[s] = true }
        posted[p.kind, default: 0] += 1
        if p.chain.indirect { indirect += 1 }
        p.detail += (p.chain.indirect ? ", indirect" : ", direct") + (split ? ", split header" : "")
        pending[p.chain.head] = p
        return p
    }

    /// Places a chain, or gives its buffers back when the descriptor table is short.
    private func place(
        _ kind: Kind, type: UInt32, sector: UInt64 = 0, pieces: [Driver.Piece], units: [Range<Int>], indirect: Bool,
        split: Bool, statusAt: UInt64? = nil
    ) -> Pending? {
        guard
            let chain = driver.place(
                type: type, sector: sector, pieces: pieces, indirect: indirect, splitHeader: split, statusAt: statusAt,
                units: units)
        else {
            driver.release(Driver.Chain(head: 0, descriptors: [], units: units, statusGPA: 0))
            return nil
        }
        return Pending(number: 0, kind: kind, chain: chain)
    }

    /// Data buffers for `bytes`: 1 to `maxSegments` segments, cut at sector boundaries, or (one
    /// in eight) at any byte and at any byte address, which the daemon bounces under O_DIRECT.
    private func buffers(bytes: Int, maxSegments: Int, extraLast: Int, units: inout [Range<Int>]) -> [Segment]? {
        let odd = random(8) == 0
        if odd { misaligned += 1 }
        let positions = odd ? bytes - 1 : bytes / 512 - 1
        let count = 1 + random(min(maxSegments, positions + 1))
        var cuts = Set<Int>()
        while cuts.count < count - 1 { cuts.insert(1 + random(positions)) }
        let edges = [0] + cuts.sorted().map { odd ? $0 : $0 * 512 } + [bytes]
        var out: [Segment] = []
        for i in 0..<(edges.count - 1) {
            let length = edges[i + 1] - edges[i] + (i == edges.count - 2 ? extraLast : 0)
            guard let s = driver.buffer(length: length, offset: odd ? random(512) : 0, into: &units) else {
                return nil
            }
            out.append(s)
        }
        return out
    }

    private func readOrWrite(write: Bool, indirect: Bool, split: Bool) -> Pending? {
        let blocks = random(20) < 17 ? 1 + random(16) : 17 + random(112)
        let sectors = min(blocks * blockSectors, 128)
        let first = start(sectors)
        guard isFree(first..<(first + sectors)) else { return nil }
        // A READ's status byte shares the last data descriptor one time in ten.
        let merged = !write && random(10) == 0
        let maxSegments = indirect ? driver.indirectEntries - 3 : 6
        var units: [Range<Int>] = []
        guard
            var segments = buffers(
                bytes: sectors * 512, maxSegments: maxSegments, extraLast: merged ? 1 : 0, units: &units)
        else {
            driver.release(Driver.Chain(head: 0, descriptors: [], units: units, statusGPA: 0))
            return nil
        }
        let pieces = segments.map { Driver.Piece(gpa: $0.gpa, length: $0.length, writable: !write) }
        var statusAt: UInt64? = nil
        if merged {
            segments[segments.count - 1].length -= 1
            statusAt = segments[segments.count - 1].gpa + UInt64(segments[segments.count - 1].length)
        }
        var hashes: [UInt64] = []
        if write {
            let data = Pattern.bytes(count: sectors * 512, seed: rng.next())
            driver.scatter(data, into: segments)
            hashes = Self.hashes(data)
        } else {
            driver.scatter([UInt8](repeating: 0xA5, count: sectors * 512), into: segments)
        }
        guard
            var p = place(
                write ? .write : .read, type: write ? VirtioBlkType.write : VirtioBlkType.read,
                sector: UInt64(first), pieces: pieces, units: units, indirect: indirect, split: split,
                statusAt: statusAt)
        else { return nil }
        p.sectors = first..<(first + sectors)
        p.segments = segments
        p.hashes = hashes
        p.detail =
            "sector \(first), \(sectors) sectors in \(segments.count) segments \(segments.map { "\($0.gpa - VhostUserTestRing.base):\($0.length)" })\(merged ? ", status in the data" : "")"
        return p
    }

    /// A DISCARD or WRITE_ZEROES (UNMAP one time in two) of up to 256 sectors.
    private func range(_ kind: Kind, indirect: Bool, split: Bool) -> Pending? {
        let sectors = min(maxRangeSectors, (1 + random(256 / blockSectors)) * blockSectors)
        let first = start(sectors)
        guard isFree(first..<(first + sectors)) else { return nil }
        let unmap = kind == .writeZeroes && random(2) == 0
        guard
            var p = segmentRequest(
                kind, sector: UInt64(first), sectors: UInt32(sectors), flags: unmap ? 1 : 0, indirect: indirect,
                split: split)
        else { return nil }
        p.sectors = first..<(first + sectors)
        p.detail = "sector \(first), \(sectors) sectors\(unmap ? ", UNMAP" : "")"
        return p
    }

    /// A chain whose one readable data descriptor is a virtio_blk_discard_write_zeroes segment.
    private func segmentRequest(
        _ kind: Kind, type: UInt32? = nil, sector: UInt64, sectors: UInt32, flags: UInt32, indirect: Bool, split: Bool
    ) -> Pending? {
        var units: [Range<Int>] = []
        guard let s = driver.buffer(length: 16, into: &units) else { return nil }
        let payload =
            VhostUserTest.le(sector) + VhostUserTest.le(sectors) + VhostUserTest.le(flags)
        driver.scatter(payload, into: [s])
        let t = type ?? (kind == .discard ? VirtioBlkType.discard : VirtioBlkType.writeZeroes)
        return place(
            kind, type: t, pieces: [Driver.Piece(gpa: s.gpa, length: 16, writable: false)], units: units,
            indirect: indirect, split: split)
    }

    private func getID(indirect: Bool, split: Bool) -> Pending? {
        var units: [Range<Int>] = []
        guard let s = driver.buffer(length: 1 + random(32), into: &units) else { return nil }
        driver.scatter([UInt8](repeating: 0xA5, count: s.length), into: [s])
        var p = place(
            .getID, type: VirtioBlkType.getID, pieces: [Driver.Piece(gpa: s.gpa, length: s.length, writable: true)],
            units: units, indirect: indirect, split: split)
        p?.segments = [s]
        p?.detail = "\(s.length)-byte buffer"
        return p
    }

    /// An unknown type (with or without a data buffer), or DISCARD / WRITE_ZEROES with flags the
    /// type does not allow: UNSUPP, no I/O.
    private func unsupported(indirect: Bool, split: Bool) -> Pending? {
        if random(5) < 3 {
            let type = Self.unknownTypes[random(Self.unknownTypes.count)]
            var units: [Range<Int>] = []
            var pieces: [Driver.Piece] = []
            if random(2) == 0, let s = driver.buffer(length: 512, into: &units) {
                pieces.append(Driver.Piece(gpa: s.gpa, length: 512, writable: random(2) == 0))
            }
            var p = place(
                .unsupported, type: type, sector: UInt64(random(capacity)), pieces: pieces, units: units,
                indirect: indirect, split: split)
            p?.detail =
                "type \(type)\(pieces.isEmpty ? "" : ", one \(pieces[0].writable ? "writable" : "readable") buffer")"
            return p
        }
        let discard = random(2) == 0
        let flags: UInt32 = discard ? [1, 2][random(2)] : [2, 0x8000_0000][random(2)]
        var p = segmentRequest(
            .unsupported, type: discard ? VirtioBlkType.discard : VirtioBlkType.writeZeroes,
            sector: UInt64(start(8 * blockSectors)), sectors: UInt32(8 * blockSectors), flags: flags,
            indirect: indirect, split: split)
        p?.detail = "\(discard ? "DISCARD" : "WRITE_ZEROES") flags \(flags)"
        return p
    }

    /// READ, WRITE, DISCARD or WRITE_ZEROES past the last sector (just past it, far past it, or
    /// with a sector that overflows when the length is added): IOERR, no I/O.
    private func beyondCapacity(indirect: Bool, split: Bool) -> Pending? {
        let sectors = blockSectors * (1 + random(8))
        let sector: UInt64
        switch random(3) {
        case 0: sector = UInt64(capacity - sectors + blockSectors * (1 + random(sectors / blockSectors)))
        case 1: sector = UInt64(capacity + blockSectors * random(1 << 20))
        default: sector = UInt64.max - UInt64(blockSectors * random(4) + blockSectors - 1)
        }
        let which = random(4)
        if which >= 2 {
            var p = segmentRequest(
                .beyondCapacity, type: which == 2 ? VirtioBlkType.discard : VirtioBlkType.writeZeroes, sector: sector,
                sectors: UInt32(sectors), flags: 0, indirect: indirect, split: split)
            p?.detail = "\(which == 2 ? "DISCARD" : "WRITE_ZEROES") sector \(sector), \(sectors) sectors"
            return p
        }
        let write = which == 1
        var units: [Range<Int>] = []
        guard let s = driver.buffer(length: sectors * 512, into: &units) else { return nil }
        driver.scatter([UInt8](repeating: 0xA5, count: s.length), into: [s])
        var p = place(
            .beyondCapacity, type: write ? VirtioBlkType.write : VirtioBlkType.read, sector: sector,
            pieces: [Driver.Piece(gpa: s.gpa, length: s.length, writable: !write)], units: units, indirect: indirect,
            split: split)
        p?.segments = write ? [] : [s]
        p?.detail = "\(write ? "WRITE" : "READ") sector \(sector), \(sectors) sectors"
        return p
    }
}
