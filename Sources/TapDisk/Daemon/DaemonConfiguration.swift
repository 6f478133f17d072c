/// Everything the command line decides about one daemon (docs/protocol.md §1, §6).
package struct DaemonConfiguration: Sendable {
    package var imagePath: String
    /// nil only under socket activation.
    package var socketPath: String?
    /// `--vhost-user-blk`: serve a vhost-user-blk front-end (QEMU) on this stream socket instead
    /// of blkif frontends attaching over the control socket.
    package var vhostUserSocketPath: String? = nil
    /// `--nbd`: serve NBD clients here (docs/nbd.md); nil without it (a socket-activated
    /// listener named `nbd` is used even then).
    package var nbdAddress: NBDListenAddress? = nil
    /// `--nbd-export-name`: the export's name (the empty name selects it too).
    package var nbdExportName: String? = nil
    /// `--nbd-max-connections`: NBD clients at once, handshakes included.
    package var nbdMaxConnections = 16
    /// `--nbd-handshake-timeout`: seconds a client has to enter transmission.
    package var nbdHandshakeTimeoutSeconds: UInt64 = 10
    package var readOnly = false
    package var cache: CacheMode = .none
    package var policy = FailurePolicy()
    package var maxRingPageOrder = 4
    package var lowSpaceThreshold: LowSpaceThreshold? = nil
    /// Control connections open at once, the frontend's included; one more is answered `busy`
    /// and closed (`--max-control-connections`, docs/protocol.md §2.1).
    package var maxControlConnections = 64
    /// The longest the loop spins for work before sleeping (µs); 0 = never (`--poll-us`).
    package var pollMicroseconds: UInt64 = DaemonConfiguration.defaultPollMicroseconds
    /// CPUs the daemon's thread may run on (`--cpu`); nil = wherever the scheduler likes.
    package var cpus: [Int]? = nil
    /// `--limit`: the disk's QoS limits at start (`set-limits` changes them later).
    package var limits = ThrottleLimits()

    /// Off by default: on this project's machine polling won some cases and lost others by more
    /// (docs/performance.md), so it is opt-in.
    package static let defaultPollMicroseconds: UInt64 = 0

    package init(imagePath: String, socketPath: String?) {
        self.imagePath = imagePath
        self.socketPath = socketPath
    }
}
