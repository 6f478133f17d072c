import Glibc

/// The sockets systemd passed by socket activation, with their `FileDescriptorName=`s
/// (`sd_listen_fds_with_names(3)`), for a listener found by name rather than by position: the
/// NBD listener is the fd named `nbd`, whatever else the unit passes.
package struct SystemdListenFDs: Equatable, Sendable {
    /// `SD_LISTEN_FDS_START`.
    package static let firstFD: Int32 = 3
    /// More than this many passed fds is a misconfiguration, not something to iterate over.
    package static let maximumCount = 64

    /// The fds in order, each with its name ("unknown" when systemd sent none, as sd-daemon does).
    package let descriptors: [(fd: Int32, name: String)]

    package static func == (a: Self, b: Self) -> Bool {
        a.descriptors.elementsEqual(b.descriptors) { $0.fd == $1.fd && $0.name == $1.name }
    }

    /// The passed fds, or nil when none are meant for this process (`LISTEN_PID` is another's or
    /// absent, `LISTEN_FDS` missing, zero or malformed).
    package init?(environment: SystemdNotifier.Environment, pid: Int32 = getpid()) {
        guard let pidText = environment("LISTEN_PID"), Int32(pidText) == pid,
            let countText = environment("LISTEN_FDS"), let count = Int(countText),
            (1...Self.maximumCount).contains(count)
        else { return nil }
        let names = environment("LISTEN_FDNAMES")?.split(separator: ":", omittingEmptySubsequences: false) ?? []
        descriptors = (0..<count).map { i in
            (Self.firstFD + Int32(i), i < names.count ? String(names[i]) : "unknown")
        }
    }

    /// The first fd named `name`.
    package func fd(named name: String) -> Int32? {
        descriptors.first { $0.name == name }?.fd
    }
}
