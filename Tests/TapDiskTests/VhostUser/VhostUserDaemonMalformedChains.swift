import Testing

@testable import TapDisk

/// Malformed descriptor chains as a hostile driver writes them, each built at descriptors
/// `first...` of `VhostUserTestFrontend`'s ring; the daemon must answer every one exactly once,
/// without I/O and never with OK.
struct MalformedChain: CustomStringConvertible, Sendable {
    typealias Ring = VhostUserTestRing
    typealias Frontend = VhostUserTestFrontend

    var description: String
    /// The walk reaches the status byte, so IOERR is owed there (otherwise the daemon cannot
    /// know where it is: it completes the head with length 0 and may leave the byte alone).
    var statusKnown = false
    /// Writes the chain with head `first`; returns the address of the intended status byte.
    var build: @Sendable (Frontend, Int) -> UInt64

    static let N = Ring.N
    static let W = Ring.W
    static let I = Ring.I

    /// A READ header for head `first`; returns its address.
    static func header(_ f: Frontend, _ first: Int, type: UInt32 = VirtioBlkType.read, sector: UInt64 = 0) -> UInt64 {
        let h = Frontend.headerAddress(first)
        f.ring.writeHeader(at: h, type: type, sector: sector)
        return h
    }

    /// A data buffer of its own for head `first` (4 KiB, inside guest memory).
    static func data(_ first: Int) -> UInt64 { Ring.data(UInt64(first % 64) * 0x1000) }

    /// An indirect table of its own for head `first` (1 KiB each, 48 KiB in all).
    static func table(_ first: Int) -> UInt64 { Ring.indirect(UInt64(first % 48) * 0x400) }

    /// header → data → status, with `data` replacing the middle descriptor's fields.
    static func threeDescriptors(
        _ name: String, dataAddress: (@Sendable (Int) -> UInt64)? = nil, dataLength: UInt32 = 4096,
        statusAddress: (@Sendable (Int) -> UInt64)? = nil
    ) -> MalformedChain {
        MalformedChain(description: name) { f, first in
            let h = header(f, first)
            let s = statusAddress?(first) ?? Frontend.statusAddress(first)
            f.ring.setDescriptor(first, address: h, length: 16, flags: N, next: UInt16(first + 1))
            f.ring.setDescriptor(
                first + 1, address: dataAddress?(first) ?? data(first), length: dataLength, flags: N | W,
                next: UInt16(first + 2))
            f.ring.setDescriptor(first + 2, address: s, length: 1, flags: W)
            return Frontend.statusAddress(first)
        }
    }

    /// A head whose INDIRECT descriptor points at `entries` table entries built by `fill`.
    static func indirect(
        _ name: String, entries: Int, length: UInt32? = nil, headFlags: UInt16 = I,
        address: (@Sendable (Int) -> UInt64)? = nil,
        fill: @escaping @Sendable (Frontend, Int, UInt64) -> Void
    ) -> MalformedChain {
        MalformedChain(description: name) { f, first in
            let t = address?(first) ?? table(first)
            f.ring.setDescriptor(
                first, address: t, length: length ?? UInt32(16 * entries), flags: headFlags, next: UInt16(first + 1))
            if address == nil { fill(f, first, t) }
            return Frontend.statusAddress(first)
        }
    }

    /// header, data, status inside an indirect table at `t` (entries 0, 1, 2).
    static func tableRequest(_ f: Frontend, _ first: Int, _ t: UInt64) {
        f.ring.setDescriptor(0, address: header(f, first), length: 16, flags: N, next: 1, table: t)
        f.ring.setDescriptor(1, address: data(first), length: 4096, flags: N | W, next: 2, table: t)
        f.ring.setDescriptor(2, address: Frontend.statusAddress(first), length: 1, flags: W, table: t)
    }

    // MARK: - The catalogue

    static let loops: [MalformedChain] = [
        MalformedChain(description: "self loop on the header") { f, first in
            f.ring.setDescriptor(first, address: header(f, first), length: 16, flags: N, next: UInt16(first))
            return Frontend.statusAddress(first)
        },
        MalformedChain(description: "WRITE data points back to the header") { f, first in
            f.ring.setDescriptor(
                first, address: header(f, first, type: VirtioBlkType.write), length: 16, flags: N,
                next: UInt16(first + 1))
            f.ring.setDescriptor(first + 1, address: data(first), length: 4096, flags: N, next: UInt16(first))
            return Frontend.statusAddress(first)
        },
        MalformedChain(description: "status points back to the data") { f, first in
            f.ring.setDescriptor(first, address: header(f, first), length: 16, flags: N, next: UInt16(first + 1))
            f.ring.setDescriptor(first + 1, address: data(first), length: 512, flags: N | W, next: UInt16(first + 2))
            f.ring.setDescriptor(
                first + 2, address: Frontend.statusAddress(first), length: 1, flags: N | W, next: UInt16(first + 1))
            return Frontend.statusAddress(first)
        },
        indirect("loop inside an indirect table", entries: 3) { f, first, t in
            tableRequest(f, first, t)
            f.ring.setDescriptor(2, address: Frontend.statusAddress(first), length: 1, flags: N | W, next: 1, table: t)
        },
    ]

    static let outsideMemory: [MalformedChain] = [
        threeDescriptors("data below every region", dataAddress: { _ in 0x1000 }),
        threeDescriptors("data just past the region", dataAddress: { _ in Ring.base + Ring.bytes }),
        threeDescriptors("data straddling the region's end", dataAddress: { _ in Ring.base + Ring.bytes - 100 }),
        threeDescriptors("data address wrapping 2^64", dataAddress: { _ in UInt64.max - 10 }),
        threeDescriptors("status byte outside memory", statusAddress: { _ in 0xdead_0000_0000 }),
        MalformedChain(description: "header outside memory") { f, first in
            f.ring.setDescriptor(first, address: 0x10, length: 16, flags: N, next: UInt16(first + 1))
            f.ring.setDescriptor(first + 1, address: data(first), length: 4096, flags: N | W, next: UInt16(first + 2))
            f.ring.setDescriptor(first + 2, address: Frontend.statusAddress(first), length: 1, flags: W)
            return Frontend.statusAddress(first)
        },
        indirect("indirect table outside memory", entries: 3, address: { _ in 0xdead_0000 }) { _, _, _ in },
        indirect("indirect entry outside memory", entries: 3) { f, first, t in
            tableRequest(f, first, t)
            f.ring.setDescriptor(1, address: UInt64.max - 4095, length: 4096, flags: N | W, next: 2, table: t)
        },
    ]

    /// Over the byte limit and over the segments the daemon takes, derived from GET_CONFIG.
    static func oversized(segMax: Int, sizeMax: Int) -> [MalformedChain] {
        [
            threeDescriptors("a 4 GiB data descriptor", dataLength: UInt32.max),
            indirect("bytes over seg_max × size_max (valid addresses)", entries: segMax + 4) { f, first, t in
                f.ring.setDescriptor(0, address: header(f, first), length: 16, flags: N, next: 1, table: t)
                for i in 1...(segMax + 2) {
                    // Every segment is the same in-memory buffer: only the sum is wrong.
                    f.ring.setDescriptor(
                        i, address: Ring.data(0), length: UInt32(sizeMax), flags: N | W, next: UInt16(i + 1), table: t)
                }
                f.ring.setDescriptor(
                    segMax + 3, address: Frontend.statusAddress(first), length: 1, flags: W, table: t)
            },
            indirect("2 × seg_max + 3 segments of 512 bytes", entries: 2 * segMax + 5) { f, first, t in
                f.ring.setDescriptor(0, address: header(f, first), length: 16, flags: N, next: 1, table: t)
                for i in 1...(2 * segMax + 3) {
                    f.ring.setDescriptor(
                        i, address: data(first), length: 512, flags: N | W, next: UInt16(i + 1), table: t)
                }
                f.ring.setDescriptor(
                    2 * segMax + 4, address: Frontend.statusAddress(first), length: 1, flags: W, table: t)
            },
        ]
    }

    static let indirectMisuse: [MalformedChain] = [
        indirect("indirect inside indirect", entries: 2) { f, first, t in
            f.ring.setDescriptor(0, address: table(first + 1), length: 48, flags: I, table: t)
            tableRequest(f, first, table(first + 1))
        },
        indirect("indirect length 0", entries: 3, length: 0, fill: tableRequest),
        indirect("indirect length 24 (not a multiple of 16)", entries: 3, length: 24, fill: tableRequest),
        indirect("indirect of 1025 entries", entries: 3, length: 16 * 1025, address: { _ in Ring.indirect(0) }) {
            _, _, _ in
        },
        indirect("indirect with NEXT", entries: 3, headFlags: I | N, fill: tableRequest),
        indirect("indirect entry's next beyond the table", entries: 3) { f, first, t in
            tableRequest(f, first, t)
            f.ring.setDescriptor(1, address: data(first), length: 4096, flags: N | W, next: 7, table: t)
        },
        MalformedChain(description: "indirect after the head") { f, first in
            f.ring.setDescriptor(first, address: header(f, first), length: 16, flags: N, next: UInt16(first + 1))
            f.ring.setDescriptor(first + 1, address: table(first), length: 48, flags: I)
            tableRequest(f, first, table(first))
            return Frontend.statusAddress(first)
        },
    ]

    static let shapes: [MalformedChain] = [
        MalformedChain(description: "next beyond the queue") { f, first in
            f.ring.setDescriptor(first, address: header(f, first), length: 16, flags: N, next: 0xfff0)
            return Frontend.statusAddress(first)
        },
        MalformedChain(description: "no status byte (nothing device-writable)") { f, first in
            f.ring.setDescriptor(first, address: header(f, first), length: 16, flags: N, next: UInt16(first + 1))
            f.ring.setDescriptor(first + 1, address: data(first), length: 4096)
            return Frontend.statusAddress(first)
        },
        MalformedChain(description: "readable after writable") { f, first in
            f.ring.setDescriptor(first, address: header(f, first), length: 16, flags: N, next: UInt16(first + 1))
            f.ring.setDescriptor(first + 1, address: data(first), length: 4096, flags: N | W, next: UInt16(first + 2))
            f.ring.setDescriptor(first + 2, address: data(first), length: 16, flags: N, next: UInt16(first + 3))
            f.ring.setDescriptor(first + 3, address: Frontend.statusAddress(first), length: 1, flags: W)
            return Frontend.statusAddress(first)
        },
        MalformedChain(description: "8-byte header", statusKnown: true) { f, first in
            f.ring.setDescriptor(first, address: header(f, first), length: 8, flags: N, next: UInt16(first + 1))
            f.ring.setDescriptor(first + 1, address: data(first), length: 4096, flags: N | W, next: UInt16(first + 2))
            f.ring.setDescriptor(first + 2, address: Frontend.statusAddress(first), length: 1, flags: W)
            return Frontend.statusAddress(first)
        },
    ]
}
