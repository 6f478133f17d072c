import Glibc
import Testing

@testable import TapDisk

/// Judging one used entry against what its head asked for, and moving the shadow model.
extension VhostUserPropertyRun {
    static let ok = VirtioBlkStatus.ok.rawValue
    static let ioError = VirtioBlkStatus.ioError.rawValue
    static let unsupported = VirtioBlkStatus.unsupported.rawValue

    /// The status bytes a request of `kind` may be answered with.
    static func allowed(_ p: Pending) -> Set<UInt8> {
        switch p.kind {
        case .read, .write, .discard, .writeZeroes: [ok, ioError]
        case .flush: p.afterFailedFlush ? [ioError] : [ok, ioError]
        case .getID: [ok]
        case .unsupported: [unsupported]
        case .beyondCapacity: [ioError]
        }
    }

    /// One used element: exactly one per posted head, with an allowed status byte and the
    /// length the device wrote; OK READs match the model, OK WRITEs and DISCARDs update it.
    func absorb(id: UInt32, length: UInt32) {
        answered += 1
        guard id < UInt32(driver.queueSize), let p = pending.removeValue(forKey: UInt16(id)) else {
            Issue.record("seed \(seed): used entry for head \(id), which is not in flight (answered twice?)")
            return
        }
        defer {
            for s in p.sectors { busy[s] = false }
            driver.release(p.chain)
        }
        let what = "seed \(seed), request #\(p.number) \(p.kind.rawValue) head \(p.chain.head) (\(p.detail))"
        let status = driver.frontend.status(at: p.chain.statusGPA)
        statuses[status, default: 0] += 1
        guard Self.allowed(p).contains(status) else {
            Issue.record("\(what): status \(status), expected one of \(Self.allowed(p).sorted())")
            return
        }
        let wantLength: UInt32
        switch (p.kind, status) {
        case (.read, Self.ok): wantLength = UInt32(p.sectors.count * 512 + 1)
        case (.getID, _): wantLength = UInt32(min(p.segments[0].length, Self.serial.count) + 1)
        default: wantLength = 1
        }
        #expect(length == wantLength, "\(what): used length \(length), status \(status)")
        switch (p.kind, status) {
        case (.write, Self.ok):
            okWrites += 1
            for (i, s) in p.sectors.enumerated() { model[s] = .content(p.hashes[i]) }
        case (.write, _):
            failedWrites += 1
            for s in p.sectors { model[s] = .undefined }
        case (.discard, Self.ok), (.writeZeroes, Self.ok):
            for s in p.sectors { model[s] = .zeros }
        case (.discard, _), (.writeZeroes, _):
            for s in p.sectors { model[s] = .undefined }
        case (.read, Self.ok):
            okReads += 1
            checkRead(p, what)
        case (.flush, Self.ioError):
            failedFlushes += 1
            flushFailed = true
        case (.getID, _):
            let got = driver.gather(p.segments)
            let n = min(got.count, Self.serial.count)
            let want = Array(Self.serial[..<n]) + [UInt8](repeating: 0xA5, count: got.count - n)
            #expect(got == want, "\(what): GET_ID buffer \(got)")
        case (.beyondCapacity, _) where !p.segments.isEmpty:
            // Rejected before any I/O: the READ buffer is untouched.
            #expect(driver.gather(p.segments).allSatisfy { $0 == 0xA5 }, "\(what): rejected READ wrote data")
        default: break
        }
    }

    /// Every sector of an OK READ against the model (undefined sectors are not checked).
    private func checkRead(_ p: Pending, _ what: String) {
        let got = Self.hashes(driver.gather(p.segments))
        var wrong: [String] = []
        for (i, s) in p.sectors.enumerated() {
            if model[s] != .undefined { checkedSectors += 1 }
            switch model[s] {
            case .content(let h) where h != got[i]: wrong.append("\(s) (written content)")
            case .zeros where got[i] != Self.zeroHash: wrong.append("\(s) (zeros)")
            default: break
            }
        }
        #expect(wrong.isEmpty, "\(what): sectors differ from the model: \(wrong.prefix(8)) of \(wrong.count)")
    }

    /// The sectors of the image file that differ from the model (undefined ones not checked).
    func imageMismatches(path: String) -> [Int] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: capacity * 512)
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n == bytes.count else { return [-1] }
        let hashes = Self.hashes(bytes)
        return (0..<capacity).filter { s in
            switch model[s] {
            case .undefined: false
            case .zeros: hashes[s] != Self.zeroHash
            case .content(let h): hashes[s] != h
            }
        }
    }

    /// A line per request still in flight (for a timeout's report).
    var pendingSummary: String {
        pending.values.sorted { $0.number < $1.number }.prefix(12).map {
            "#\($0.number) \($0.kind.rawValue) head \($0.chain.head) (\($0.detail))"
        }.joined(separator: "; ")
    }
}
