// In-process data-path benchmark: an Engine and a BlockFrontend over one memfd (as
// Tests/TapDiskTests/Support/EngineHarness.swift does), 4 KiB reads and writes at QD1, measured
// in steady state for wall clock, throughput and mallocs per request.
//
// NOTE: this does not compile against the current TapDisk library. Engine, Image, BlockFrontend
// and BlkifRequest are `package` symbols, and `package` access only reaches modules of the same
// SwiftPM package; this is a separate package. The measurement that actually runs is
// Tests/TapDiskTests/AllocationTests.swift (see Benchmarks/README.md).
import Benchmark
import CLibAIO
import Glibc
import TapDisk

private final class InProcessDisk {
    let engine: Engine
    let frontend: BlockFrontend
    let path: String
    let sectors: UInt64
    var request = clibaio_blkif_request()
    var rng: UInt64 = 0x9E37_79B9_7F4A_7C15

    init(imageBytes: Int) throws {
        path = "/var/tmp/tapdisk-bench-\(getpid()).img"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        precondition(fd >= 0)
        precondition(posix_fallocate(fd, 0, off_t(imageBytes)) == 0)
        close(fd)
        sectors = UInt64(imageBytes / 512)
        engine = try Engine(image: Image(path: path, cache: .none, readOnly: false))
        frontend = try BlockFrontend(pageOrder: 2, dataPages: 16)
        try engine.attach(frontend.makeAttachment())
        withUnsafeMutableBytes(of: &request.seg) { raw in
            raw.bindMemory(to: clibaio_blkif_segment.self)[0] = clibaio_blkif_segment(gref: 0, first_sect: 0, last_sect: 7, pad: 0)
        }
        request.nr_segments = 1
    }

    deinit {
        engine.beginDetach()
        while !engine.isDrained { step() }
        _ = engine.finishDetach()
        unlink(path)
    }

    func step() {
        var p = pollfd(fd: engine.completionFD, events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, 5)
        engine.handleCompletions()
    }

    /// One request, submit to response.
    @inline(__always)
    func roundTrip(operation: UInt8, id: UInt64) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
        request.operation = operation
        request.id = id
        request.sector_number = (rng % (sectors / 8)) * 8
        frontend.enqueue(request)
        frontend.push()
        engine.handleKick()
        var done = false
        while !done {
            _ = frontend.reap { r in
                precondition(r.status == 0)
                done = true
            }
            if !done { step() }
        }
    }
}

let benchmarks: @Sendable () -> Void = {
    let config = Benchmark.Configuration(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        scalingFactor: .kilo,
        maxDuration: .seconds(5)
    )
    for (name, op) in [("read 4k QD1", BlkifOperation.read.rawValue), ("write 4k QD1", BlkifOperation.write.rawValue)] {
        Benchmark(name, configuration: config) { benchmark in
            let disk = try InProcessDisk(imageBytes: 64 << 20)
            for i in 0..<1000 { disk.roundTrip(operation: op, id: UInt64(i)) }  // warm-up
            benchmark.startMeasurement()
            for i in benchmark.scaledIterations { disk.roundTrip(operation: op, id: UInt64(i)) }
            benchmark.stopMeasurement()
        }
    }
}
