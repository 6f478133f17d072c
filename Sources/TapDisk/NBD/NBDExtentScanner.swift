import CLibAIO
import Glibc

/// `base:allocation` extents for `NBD_CMD_BLOCK_STATUS`, from the image's own allocation
/// (`SEEK_DATA`/`SEEK_HOLE`), so `qemu-img map`, `nbdinfo --map` and `nbdcopy` see the real
/// sparseness: a hole is `HOLE|ZERO`, data is 0 ("allocated, contents unknown").
///
/// At most `capacity` extents per reply (the spec lets a server answer less than the range and
/// clients ask again from the first offset not covered), so a fragmented file cannot make one
/// reply, or the time spent building it, unbounded. Boundaries are rounded to the minimum block
/// size (a partly allocated block counts as data), since descriptors should be multiples of it.
/// A file system or device without `SEEK_DATA` reports everything as data, which is always true.
package enum NBDExtentScanner {
    /// Extents per reply: 4 KiB of descriptors, far fewer syscalls than one reply's worth of I/O.
    package static let maximumExtents = 512

    /// One extent.
    package struct Extent: Equatable, Sendable {
        package var length: UInt32
        package var flags: NBDBlockStatusFlags
        package init(length: UInt32, flags: NBDBlockStatusFlags) {
            self.length = length
            self.flags = flags
        }
    }

    /// Calls `body` for each extent of `[offset, offset + length)` (already validated to lie in the
    /// export, `length` > 0), at most `capacity` times (1 with `requestOne`), merging neighbours
    /// with equal flags. Returns how many extents were reported.
    @discardableResult
    package static func scan(
        fd: Int32, offset: UInt64, length: UInt32, minimumBlockSize: UInt32, capacity: Int = maximumExtents,
        requestOne: Bool = false, _ body: (Extent) -> Void
    ) -> Int {
        let end = offset + UInt64(length)
        let mask = UInt64(minimumBlockSize) - 1
        var position = offset
        var pending: Extent?
        var count = 0
        let limit = requestOne ? 1 : max(1, capacity)
        while position < end {
            let next: UInt64
            let flags: NBDBlockStatusFlags
            let data = lseek(fd, off_t(position), clibaio_SEEK_DATA)
            if data < 0 {
                // ENXIO: no data at or after `position`; anything else: no SEEK_DATA here.
                (next, flags) = errno == ENXIO ? (end, .unallocated) : (end, .allocated)
            } else if UInt64(data) & ~mask > position {
                (next, flags) = (min(UInt64(data) & ~mask, end), .unallocated)
            } else {
                let hole = lseek(fd, off_t(position), clibaio_SEEK_HOLE)
                let holeStart = hole < 0 ? end : (UInt64(hole) + mask) & ~mask
                (next, flags) = (min(max(holeStart, position + mask + 1), end), .allocated)
            }
            let piece = UInt32(next - position)
            position = next
            if var current = pending, current.flags == flags {
                current.length += piece
                pending = current
                continue
            }
            if let current = pending {
                body(current)
                count += 1
                if count == limit { return count }
            }
            pending = Extent(length: piece, flags: flags)
        }
        if let current = pending {
            body(current)
            count += 1
        }
        return count
    }
}
