import ArgumentParser
import CLibAIO
import Glibc
import TapDisk

/// `tapdiskd bench`: a fio-like load generator that attaches to a running daemon as its frontend.
///
/// It keeps exactly `--iodepth` requests in flight for `--seconds`, refilling as responses are
/// reaped, and reports IOPS, MiB/s and submit→response latency. The measuring loop does not
/// allocate: request templates, per-slot timestamps, the free-slot stack and the latency
/// histogram are preallocated, and requests go to the ring through `RecoveringDisk`, whose shadow
/// is preallocated too. With `--recover` it survives a daemon restart (`kill -9` and a supervisor
/// starting a new daemon on the same socket): requests are resubmitted, none is counted twice.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Drive a running daemon as a frontend and measure IOPS and latency (like fio with its libaio engine)."
    )

    enum Pattern: String, ExpressibleByArgument, CaseIterable {
        case randread, randwrite, read, write
        var isRead: Bool { self == .randread || self == .read }
        var isRandom: Bool { self == .randread || self == .randwrite }
    }

    @Option(help: "The daemon's control socket.")
    var socket: String

    @Option(help: "randread, randwrite, read or write.")
    var rw: Pattern = .randread

    @Option(help: "Request size: a multiple of 512 up to 1m; above 44k (11 segments) requests are INDIRECT.")
    var bs: String = "4k"

    @Option(help: "Requests kept in flight.")
    var iodepth: Int = 1

    @Option(help: "Measured seconds.")
    var seconds: Double = 10

    @Option(help: "Seconds of load before measuring (like fio --ramp_time).")
    var ramp: Double = 0

    @Option(
        name: .customLong("ring-page-order"),
        help: "Ring size 2^N pages (default: the smallest ring holding --iodepth).")
    var ringPageOrder: Int?

    @Option(help: "Random seed for offsets.")
    var seed: UInt64 = 0x5EED

    @Flag(
        help:
            "Survive daemon restarts: on a hang-up reconnect, attach a fresh ring and resubmit every unanswered request (PROTOCOL.md §2.3); report recoveries and the stall per recovery."
    )
    var recover = false

    @Option(
        name: .customLong("reconnect-seconds"),
        help: "With --recover: how long one recovery waits for a restarted daemon to accept an attach.")
    var reconnectSeconds: Double = 30

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    func validate() throws {
        guard iodepth >= 1 else { throw ValidationError("--iodepth must be at least 1") }
        guard reconnectSeconds > 0 else { throw ValidationError("--reconnect-seconds must be positive") }
        guard seconds > 0, ramp >= 0 else { throw ValidationError("--seconds must be positive, --ramp not negative") }
        let bytes: UInt64
        do { bytes = try ByteSize.parse(bs) } catch { throw ValidationError("--bs: \(error.message)") }
        guard bytes > 0, bytes % 512 == 0, bytes <= UInt64(Self.maxIndirectSegments * RingLayout.pageSize) else {
            throw ValidationError("--bs must be a positive multiple of 512 up to 1m")
        }
        if let ringPageOrder, !(0...RingLayout.maxPageOrder).contains(ringPageOrder) {
            throw ValidationError("--ring-page-order must be 0...\(RingLayout.maxPageOrder)")
        }
    }

    /// The daemon advertises 256 INDIRECT segments (1 MiB).
    static let maxIndirectSegments = 256

    func run() throws {
        let blockBytes = Int((try? ByteSize.parse(bs)) ?? 4096)
        let order =
            ringPageOrder ?? (0...RingLayout.maxPageOrder).first {
                RingLayout.entries(pageOrder: $0) >= UInt32(iodepth)
            } ?? RingLayout.maxPageOrder
        guard RingLayout.entries(pageOrder: order) >= UInt32(iodepth) else {
            throw ReportedFailure(
                message:
                    "tapdiskd bench: a ring of order \(order) holds \(RingLayout.entries(pageOrder: order)) requests < --iodepth \(iodepth)"
            )
        }
        let pagesPerRequest = (blockBytes + RingLayout.pageSize - 1) / RingLayout.pageSize
        let disk: RecoveringDisk
        do {
            // INDIRECT requests need one more page per slot for their descriptors.
            let indirect = pagesPerRequest > RingLayout.maxSegments
            disk = try RecoveringDisk(
                socketPath: socket, pageOrder: order, dataPages: iodepth * (pagesPerRequest + (indirect ? 1 : 0)),
                recovers: recover, reconnectSeconds: reconnectSeconds)
        } catch {
            throw ReportedFailure(message: "tapdiskd bench: attach: \(error)")
        }
        let diskBytes = disk.sectors * 512
        guard diskBytes >= UInt64(blockBytes) else {
            throw ReportedFailure(message: "tapdiskd bench: the disk is smaller than --bs")
        }
        let runner = BenchRunner(
            disk: disk, pattern: rw, blockBytes: blockBytes, pagesPerRequest: pagesPerRequest, depth: iodepth,
            blocks: diskBytes / UInt64(blockBytes), seed: seed)
        let outcome = runner.run(rampNanos: UInt64(ramp * 1e9), measureNanos: UInt64(seconds * 1e9))
        runner.release()
        let detached = try? disk.disk.detach()
        let report = runner.report(outcome: outcome, ringPageOrder: order)
        print(json ? report.json : report.text)
        if detached == nil { printError("tapdiskd bench: detach failed") }
        if !outcome.ok || report.errors > 0 { throw ExitCode(1) }
    }
}
