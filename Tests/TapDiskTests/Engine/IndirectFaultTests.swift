import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// INDIRECT under the fault seam, and against a frontend that rewrites its descriptor page
/// while the request is in flight.
@Suite struct IndirectFaultTests {
    static let descriptorPage: UInt32 = 500

    func harness(_ policy: FailurePolicy = FailurePolicy()) throws -> EngineHarness {
        let h = try EngineHarness(imageBytes: 8 << 20, policy: policy, pageOrder: 2, dataPages: 512)
        for g in 0..<256 { h.fill(gref: UInt32(g), seed: UInt64(g) + 1) }
        return h
    }

    func fullSegments(_ n: Int = 256) -> [BlkifSegment] { (0..<n).map { BlkifSegment(gref: UInt32($0)) } }

    func pages(_ h: EngineHarness, _ n: Int = 256) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: h.frontend.page(0), count: n * 4096))
    }

    /// Short completions of a 1 MiB INDIRECT write and read are resubmitted for the remainder
    /// (through all 256 iovecs, from the middle of a segment) until every byte is transferred.
    @Test func shortCompletionsAreResubmitted() throws {
        let h = try harness()
        let expected = pages(h)
        h.engine.faults.completionRules = [.init(target: .write, fault: .short, count: 5)]
        h.submit([
            h.frontend.indirectRequest(
                write: true, id: 1, sector: 64, segments: fullSegments(), descriptorPage: Self.descriptorPage)
        ])
        #expect(h.run(untilResponses: 1))
        #expect(h.status(of: 1) == 0)
        #expect(h.engine.counters.shortCompletions == 5 && h.engine.faults.injectedShort == 5)
        #expect(h.readImage(offset: 64 * 512, count: 1 << 20) == expected)

        h.frontend.page(0).initializeMemory(as: UInt8.self, repeating: 0, count: 256 * 4096)
        h.engine.faults.completionRules = [.init(target: .read, fault: .short, count: 4)]
        h.submit([
            h.frontend.indirectRequest(
                write: false, id: 2, sector: 64, segments: fullSegments(), descriptorPage: Self.descriptorPage)
        ])
        #expect(h.run(untilResponses: 2))
        #expect(h.status(of: 2) == 0)
        #expect(h.engine.counters.shortCompletions == 9)
        #expect(pages(h) == expected)
        #expect(h.engine.counters.readBytes == 1 << 20 && h.engine.counters.writeBytes == 1 << 20)
    }

    /// ENOSPC, EIO and a zero-byte completion: ERROR with the indirect_op echoed, counted as a
    /// READ or WRITE error, an io-error event naming the indirect_op.
    @Test(arguments: [
        (FaultInjector.Target.write, FaultInjector.CompletionFault.errno(ENOSPC), true),
        (.write, .errno(EIO), false),
        (.read, .errno(EIO), false),
        (.read, .zero, false),
    ])
    func failuresAreAnsweredErrorWithIndirectOp(
        target: FaultInjector.Target, fault: FaultInjector.CompletionFault, nospace: Bool
    ) throws {
        let h = try harness()
        let write = target == .write
        h.engine.faults.completionRules = [.init(target: target, fault: fault, count: 1)]
        h.submit([
            h.frontend.indirectRequest(
                write: write, id: 5, sector: 0, segments: fullSegments(100), descriptorPage: Self.descriptorPage)
        ])
        #expect(h.run(untilResponses: 1))
        #expect(h.responses(for: 5).map(\.status) == [-1])
        #expect(h.responses(for: 5).first?.operation == (write ? 1 : 0))
        let c = h.engine.counters
        #expect(write ? (c.writeErrors == 1 && c.writeRequests == 1) : (c.readErrors == 1 && c.readRequests == 1))
        #expect(c.nospaceErrors == (nospace ? 1 : 0))
        #expect(c.invalidRequests == 0 && c.responsesError == 1 && c.invariantHolds)
        let ops = h.events.compactMap { e -> String? in
            if case .ioError(let op, _, _, let sector) = e, sector == 0 { return op }
            return nil
        }
        #expect(ops == [write ? "write" : "read"])
        #expect(h.engine.ioStatus == (nospace ? .nospace : .failed))
    }

    /// Under `--on-nospace pause` a failed INDIRECT write is held and lands whole on resume.
    @Test func heldAndResubmittedOnResume() throws {
        let h = try harness(FailurePolicy(onNospace: .pause))
        let expected = pages(h)
        h.engine.faults.completionRules = [.init(target: .write, fault: .errno(ENOSPC), count: 1)]
        h.submit([
            h.frontend.indirectRequest(
                write: true, id: 8, sector: 0, segments: fullSegments(), descriptorPage: Self.descriptorPage)
        ])
        #expect(h.run(until: { h.engine.held == 1 }))
        #expect(h.responses.isEmpty && h.engine.state == .paused(.nospace))
        let r = h.engine.resume(failHeld: false)
        #expect(r.resubmitted == 1 && r.failed == 0)
        #expect(h.run(untilResponses: 1))
        #expect(h.responses(for: 8).map(\.status) == [0] && h.responses(for: 8).first?.operation == 1)
        #expect(h.readImage(offset: 0, count: 1 << 20) == expected)
    }

    /// The descriptors are copied once at consumption. After the daemon consumed the request the
    /// frontend rewrites the descriptor page: half the descriptors now name other (valid) pages,
    /// half point far outside the memfd. Every write completion comes back short, so the engine
    /// rebuilds its iovecs several times after the rewrite: the data written must still be the
    /// original pages', and nothing may be read out of bounds (EFAULT would fail the request).
    @Test(arguments: [true, false])
    func rewrittenDescriptorPageChangesNothing(write: Bool) throws {
        let h = try harness()
        let segs = fullSegments(128)
        if write {
            h.engine.faults.completionRules = [.init(target: .write, fault: .short, count: 3)]
        } else {
            h.writeImage(offset: 0, bytes: Pattern.bytes(count: 128 * 4096, seed: 99))
            h.frontend.page(0).initializeMemory(as: UInt8.self, repeating: 0, count: 128 * 4096)
            h.engine.faults.completionRules = [.init(target: .read, fault: .short, count: 3)]
        }
        let expected = write ? pages(h, 128) : Pattern.bytes(count: 128 * 4096, seed: 99)
        let decoyBefore = Array(UnsafeRawBufferPointer(start: h.frontend.page(300), count: 4096))
        h.frontend.enqueue(
            h.frontend.indirectRequest(
                write: write, id: 3, sector: 0, segments: segs, descriptorPage: Self.descriptorPage))
        h.frontend.push()
        // Step the loop until the request is consumed (its descriptors copied), no further: the
        // step that consumes reaps before it consumes, so no completion has been handled yet.
        for _ in 0..<200 where h.engine.counters.writeRequests + h.engine.counters.readRequests == 0 { h.step() }
        #expect(h.engine.inFlight == 1 && h.engine.counters.shortCompletions == 0)
        let hostile = (0..<128).map { i in
            i % 2 == 0
                ? BlkifSegment(gref: 300, firstSector: 0, lastSector: 7)
                : BlkifSegment(gref: .max, firstSector: 0, lastSector: 255)
        }
        BlkifRequest.writeDescriptors(hostile, to: h.frontend.page(Self.descriptorPage))
        #expect(h.run(untilResponses: 1))
        #expect(h.responses(for: 3).map(\.status) == [0])
        #expect(h.engine.counters.shortCompletions == 3)
        if write {
            #expect(h.readImage(offset: 0, count: 128 * 4096) == expected)
        } else {
            #expect(pages(h, 128) == expected)
            #expect(Array(UnsafeRawBufferPointer(start: h.frontend.page(300), count: 4096)) == decoyBefore)
        }
    }
}
