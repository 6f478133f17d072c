import ArgumentParser
import Glibc
import Logging
import TapDisk

extension CacheMode: ExpressibleByArgument {}
extension FailureAction: ExpressibleByArgument {}

/// Serves one image until SIGTERM (docs/protocol.md §1).
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Serve a disk image (the default).")

    @Option(help: "The disk image: a regular file or a block device.")
    var image: String

    @Option(help: "The control socket path (AF_UNIX SOCK_SEQPACKET). Optional under systemd socket activation.")
    var socket: String?

    @Option(
        name: .customLong("vhost-user-blk"),
        help:
            "Serve the disk to a vhost-user-blk front-end (QEMU) on this AF_UNIX stream socket (under socket activation, on the passed stream socket instead)."
    )
    var vhostUserBlk: String? = nil

    @Option(
        name: .customLong("nbd"),
        help: "Serve the disk to NBD clients on unix:PATH or tcp:HOST:PORT (docs/nbd.md).")
    var nbd: String? = nil

    @Option(
        name: .customLong("nbd-export-name"),
        help: "The NBD export's name (default: the image file's name); the empty name selects it too.")
    var nbdExportName: String? = nil

    @Option(name: .customLong("nbd-max-connections"), help: "NBD clients at once, handshakes included (8...256).")
    var nbdMaxConnections: Int = 16

    @Option(
        name: .customLong("nbd-handshake-timeout"),
        help: "Seconds an NBD client has to finish its handshake (1...3600).")
    var nbdHandshakeTimeout: UInt64 = 10

    @Flag(help: "Serve the disk read-only.")
    var readonly = false

    @Option(help: "Caching: none (O_DIRECT), writeback, writethrough (O_DSYNC), directsync (O_DIRECT|O_DSYNC).")
    var cache: CacheMode = .none

    @Option(name: .customLong("on-nospace"), help: "On ENOSPC/EDQUOT: report (answer ERROR) or pause (hold and pause).")
    var onNospace: FailureAction = .report

    @Option(name: .customLong("on-error"), help: "On any other I/O error: report or pause.")
    var onError: FailureAction = .report

    @Option(
        name: .customLong("pause-timeout"),
        help: "Seconds a nospace/io-error pause may last before held requests fail (0 = forever).")
    var pauseTimeout: UInt64 = 60

    @Option(name: .customLong("max-ring-page-order"), help: "Largest ring a frontend may attach (2^N pages, N <= 8).")
    var maxRingPageOrder: Int = 4

    @Option(
        name: .customLong("low-space-threshold"),
        help: "Emit low-space when the image's filesystem has less free: BYTES[K|M|G|T] or N%.")
    var lowSpaceThreshold: String?

    @Option(
        name: .customLong("max-control-connections"),
        help: "Control connections open at once (16...4096); one more is refused with a busy error.")
    var maxControlConnections: Int = 64

    @Option(
        name: .customLong("poll-us"),
        help:
            "Spin up to N microseconds for requests and completions before sleeping, only while I/O is active (0 = never)."
    )
    var pollMicroseconds: Int = Int(DaemonConfiguration.defaultPollMicroseconds)

    @Option(name: .customLong("cpu"), help: "Pin the daemon to these CPUs: a list such as 0 or 0,2-3.")
    var cpu: String?

    @Option(
        name: .customLong("limit"),
        help: ArgumentHelp(
            "QoS limits, QEMU's names: iops-total=N,iops-read=N,iops-write=N,bps-total=N,bps-read=N,bps-write=N, bursts KEY-max=N,KEY-max-length=SECONDS (bytes may end in K/M/G/T).",
            valueName: "LIMITS"))
    var limit: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard (0...8).contains(maxRingPageOrder) else {
            throw ValidationError("invalid value \(maxRingPageOrder) for --max-ring-page-order: must be 0...8")
        }
        guard (16...4096).contains(maxControlConnections) else {
            throw ValidationError(
                "invalid value \(maxControlConnections) for --max-control-connections: must be 16...4096 (the protocol promises at least 16)"
            )
        }
        guard (0...10_000).contains(pollMicroseconds) else {
            throw ValidationError("invalid value \(pollMicroseconds) for --poll-us: must be 0...10000")
        }
        if let nbd {
            do { _ = try NBDListenAddress(parsing: nbd) } catch { throw ValidationError(error.description) }
        }
        guard (8...256).contains(nbdMaxConnections) else {
            throw ValidationError("invalid value \(nbdMaxConnections) for --nbd-max-connections: must be 8...256")
        }
        guard (1...3600).contains(nbdHandshakeTimeout) else {
            throw ValidationError("invalid value \(nbdHandshakeTimeout) for --nbd-handshake-timeout: must be 1...3600")
        }
        if let nbdExportName,
            nbdExportName.utf8.count > NBDHandshake.maximumStringLength || nbdExportName.utf8.contains(0)
        {
            throw ValidationError("--nbd-export-name: at most 4096 bytes and no NUL")
        }
        if let cpu, CPUList.parse(cpu) == nil {
            throw ValidationError("invalid value \(cpu) for --cpu: expected CPU numbers such as 0 or 0,2-3")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level: unknown level \(logLevel)")
        }
        if let limit {
            do { _ = try ThrottleLimits.parse(limit) } catch { throw ValidationError("--limit: \(error.message)") }
        }
        if let lowSpaceThreshold {
            do { _ = try LowSpaceThreshold.parse(lowSpaceThreshold) } catch {
                throw ValidationError("--low-space-threshold: \(error.message)")
            }
        }
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = JournaldLogHandler(label: label)
            handler.logLevel = level
            return handler
        }
        var config = DaemonConfiguration(imagePath: image, socketPath: socket)
        config.readOnly = readonly
        config.vhostUserSocketPath = vhostUserBlk
        config.nbdAddress = try nbd.map { try NBDListenAddress(parsing: $0) }
        config.nbdExportName = nbdExportName
        config.nbdMaxConnections = nbdMaxConnections
        config.nbdHandshakeTimeoutSeconds = nbdHandshakeTimeout
        config.cache = cache
        config.policy = FailurePolicy(onNospace: onNospace, onError: onError, pauseTimeoutSeconds: pauseTimeout)
        config.maxRingPageOrder = maxRingPageOrder
        config.maxControlConnections = maxControlConnections
        config.pollMicroseconds = UInt64(pollMicroseconds)
        config.cpus = cpu.flatMap(CPUList.parse)
        config.limits = try limit.map { try ThrottleLimits.parse($0) } ?? ThrottleLimits()
        config.lowSpaceThreshold = try lowSpaceThreshold.map { try LowSpaceThreshold.parse($0) }
        let daemon: Daemon
        do {
            daemon = try Daemon(config: config, logger: Logger(label: "tapdiskd"))
        } catch {
            printError("tapdiskd: \(error.description)")
            throw ExitCode(1)
        }
        let status = daemon.run()
        if status != 0 { throw ExitCode(status) }
    }
}
