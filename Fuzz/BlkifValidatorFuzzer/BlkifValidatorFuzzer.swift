import CLibAIO
import FuzzSupport
import Glibc
import TapDisk

/// libFuzzer target: one blkif request slot (and, for INDIRECT, the data pages holding its
/// segment descriptors) as a hostile frontend could write them, judged by `RequestValidator`.
///
/// Input: the request slot (`MemoryLayout<clibaio_blkif_request>.size` bytes), then the disk:
/// data-pages (1 + byte % 16), the size in sectors (u64), and a byte of flags (bit 0: 4 KiB
/// logical blocks, bit 1: read-only, bit 2: discard supported); the rest fills the data pages.
///
/// Beyond "no crash": an accepted request's segments are each inside a page and a granted page,
/// its data range is inside the disk and aligned to the logical block, a read-only disk only
/// ever accepts reads and empty flushes, and the INDIRECT slot checks agree with the full ones.
enum Pages {
    static let maxDataPages = 16
    nonisolated(unsafe) static let base: UnsafeMutableRawPointer = .allocate(
        byteCount: maxDataPages * RingLayout.pageSize, alignment: RingLayout.pageSize)
    nonisolated(unsafe) static let descriptors: UnsafeMutablePointer<clibaio_blkif_segment> = .allocate(
        capacity: RingLayout.maxIndirectSegments)
}

func fuzzBlkifValidator(_ data: UnsafeRawBufferPointer) {
    var input = FuzzInput(data)
    var request = clibaio_blkif_request()
    let slot = input.take(bytes: MemoryLayout<clibaio_blkif_request>.size)
    withUnsafeMutableBytes(of: &request) { $0.copyMemory(from: slot) }
    let dataPages = 1 + UInt32(input.take(UInt8.self)) % UInt32(Pages.maxDataPages)
    let sectors: UInt64 = input.take()
    let flags: UInt8 = input.take()
    let validator = RequestValidator(
        dataPages: dataPages, sectors: sectors, blockSectors: flags & 1 != 0 ? 8 : 1, readOnly: flags & 2 != 0,
        discardSupported: flags & 4 != 0)
    let pageBytes = Pages.maxDataPages * RingLayout.pageSize
    memset(Pages.base, 0, pageBytes)
    let rest = input.take(bytes: pageBytes)
    if !rest.isEmpty { Pages.base.copyMemory(from: rest.baseAddress!, byteCount: rest.count) }

    let outcome: RequestValidator.Outcome
    if request.operation == BlkifOperation.indirect.rawValue {
        outcome = validator.validateIndirect(request, dataBase: Pages.base, descriptors: Pages.descriptors)
        switch validator.validateIndirectSlot(request) {
        case .reject(let why):
            fuzzCheck(outcome == .reject(why), "slot check said \(why), full check \(outcome)")
        case .accept(let s):
            fuzzCheck(s.operation == .read || s.operation == .write, "indirect op \(s.operation)")
            fuzzCheck(s.segmentCount == RequestValidator.indirectSegmentCount(request), "segment count")
            fuzzCheck((1...RingLayout.maxIndirectSegments).contains(s.segmentCount), "\(s.segmentCount) segments")
            fuzzCheck(s.pageCount <= RingLayout.maxIndirectPages, "\(s.pageCount) indirect pages")
            for i in 0..<s.pageCount {
                fuzzCheck(RequestValidator.indirectGref(request, i) < dataPages, "indirect gref out of range")
            }
            if case .accept(let a) = outcome {
                fuzzCheck(a.operation == s.operation, "indirect op changed")
                check(a, sector: request.sector_number, segments: Pages.descriptors, count: s.segmentCount, validator)
            }
        }
    } else {
        outcome = validator.validate(request)
        if case .accept(let a) = outcome {
            if a.operation == .discard {
                fuzzCheck(validator.discardSupported && !validator.readOnly, "discard accepted")
                fuzzCheck(a.dataSectors == 0, "discard with data")
                let count = withUnsafePointer(to: request) { clibaio_blkif_discard_sectors($0) }
                fuzzCheck(a.discardSectors == count, "discard sectors")
                if count > 0 { inside(request.sector_number, count, validator) }
            } else {
                fuzzCheck(a.operation.rawValue == request.operation, "operation changed")
                let n = Int(request.nr_segments)
                fuzzCheck(n <= RingLayout.maxSegments, "\(n) segments accepted")
                if a.operation == .read || a.operation == .write { fuzzCheck(n > 0, "empty read/write accepted") }
                withUnsafeBytes(of: request.seg) { raw in
                    check(
                        a, sector: request.sector_number,
                        segments: raw.baseAddress!.assumingMemoryBound(to: clibaio_blkif_segment.self), count: n,
                        validator)
                }
            }
        }
    }
}

/// The §5.1 rules, restated independently of the validator's own loop.
private func check(
    _ a: RequestValidator.Accepted, sector: UInt64, segments: UnsafePointer<clibaio_blkif_segment>, count: Int,
    _ validator: RequestValidator
) {
    var total: UInt64 = 0
    for i in 0..<count {
        let s = segments[i]
        fuzzCheck(s.first_sect <= s.last_sect && s.last_sect <= 7, "segment \(i) outside its page")
        fuzzCheck(s.gref < validator.dataPages, "segment \(i) gref out of range")
        fuzzCheck(UInt64(s.first_sect) % validator.blockSectors == 0, "segment \(i) misaligned")
        fuzzCheck((UInt64(s.last_sect) + 1) % validator.blockSectors == 0, "segment \(i) end misaligned")
        total += UInt64(s.last_sect - s.first_sect) + 1
    }
    fuzzCheck(a.dataSectors == total, "dataSectors \(a.dataSectors), segments say \(total)")
    fuzzCheck(a.discardSectors == 0, "discard sectors on \(a.operation)")
    if validator.readOnly {
        fuzzCheck(a.operation == .read || (a.operation != .write && total == 0), "read-only disk accepted a write")
    }
    if total > 0 {
        fuzzCheck(sector % validator.blockSectors == 0, "range misaligned")
        inside(sector, total, validator)
    }
}

private func inside(_ sector: UInt64, _ count: UInt64, _ validator: RequestValidator) {
    fuzzCheck(sector <= validator.sectors && count <= validator.sectors - sector, "range beyond the disk")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func blkifValidatorFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzBlkifValidator(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

@main enum BlkifValidatorFuzzer {
    static func main() {
        fuzzTargetMain("BlkifValidatorFuzzer", fuzzBlkifValidator, libFuzzerCallback: blkifValidatorFuzzerTestOneInput)
    }
}
