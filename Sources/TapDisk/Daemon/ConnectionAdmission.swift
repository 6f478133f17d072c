import CLibAIO
import Glibc

/// Who may open a control connection, and what happens when the process runs out of fds.
///
/// Without this, `accept4` failing with EMFILE left the connection in the listen backlog, the
/// level-triggered listener stayed readable, and the loop spun at full CPU while every new
/// client (the toolstack's `status` included) hung. The rule: the control socket stays
/// answerable, however many clients come and whatever the fd limit. So:
/// - at most `limit` control connections are open; one over the limit is accepted, refused with
///   a `busy` error reply and closed, so the client learns why at once;
/// - one fd (`/dev/null`) is held in reserve: on EMFILE/ENFILE it is closed, the waiting
///   connection is accepted into its slot, refused the same way and closed, and the reserve is
///   reopened; then the listener is not watched until the next timer tick (back-off), so a flood
///   of clients costs one refusal each, never a busy loop;
/// - a warning is logged once per episode of fd exhaustion, which ends with the first
///   connection accepted normally.
final class ConnectionAdmission {
    let limit: Int
    private var reserve: Int32 = -1
    /// When the listener was taken out of epoll (nil while it is watched).
    private(set) var pausedSinceNanos: UInt64? = nil
    private(set) var inExhaustion = false
    private var overLimitWarned = false
    /// Episodes of EMFILE/ENFILE on accept (`fd-exhaustion-episodes`).
    private(set) var exhaustionEpisodes: UInt64 = 0
    /// Connections accepted only to be refused: over the limit or out of fds.
    private(set) var refusedOverLimit: UInt64 = 0
    private(set) var refusedNoDescriptors: UInt64 = 0
    private var refusedThisEpisode: UInt64 = 0
    /// Refused connections whose request has not arrived yet: answered (with its tag) at a timer
    /// tick once it has, or untagged after a second. Closing at once would make the client's
    /// `send` fail with EPIPE before it ever reads the refusal.
    private var lingering: [(fd: Int32, sinceNanos: UInt64, error: ControlError)] = []
    static let maxLingering = 16
    private let buffer = UnsafeMutableRawBufferPointer.allocate(
        byteCount: ControlRequest.maxDatagramSize + 1, alignment: 8)

    init(limit: Int) {
        self.limit = limit
        reopenReserve()
    }

    deinit {
        for l in lingering { close(l.fd) }
        if reserve >= 0 { close(reserve) }
        buffer.deallocate()
    }

    var hasReserve: Bool { reserve >= 0 }

    private func reopenReserve() {
        if reserve < 0 { reserve = clibaio_open("/dev/null", O_RDONLY | clibaio_O_CLOEXEC, 0) }
        if reserve < 0 { reserve = -1 }
    }

    /// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limits now in force.
    static func raiseFileLimit() -> (soft: UInt64, hard: UInt64) {
        var soft: UInt64 = 0
        var hard: UInt64 = 0
        _ = clibaio_raise_nofile_limit(&soft, &hard)
        return (soft, hard)
    }

    // MARK: - Over the limit

    /// Refuses a connection accepted while `limit` are open. Returns true the first time in a
    /// run of refusals (the caller logs once).
    func refuseOverLimit(_ fd: Int32) -> Bool {
        refusedOverLimit += 1
        let error = ControlError.busy(
            "too many control connections (\(limit) open, --max-control-connections); try again later")
        if !answerWaitingRequest(fd, error) {
            if lingering.count < Self.maxLingering {
                lingering.append((fd, MonotonicClock.nanoseconds(), error))
            } else {
                send(error, tag: nil, to: fd)
                close(fd)
            }
        }
        defer { overLimitWarned = true }
        return !overLimitWarned
    }

    /// A connection was admitted: the next over-limit refusal is worth a log line again, and an
    /// episode of fd exhaustion is over. Returns the refusals of the episode that ended, if one did.
    func admitted() -> UInt64? {
        overLimitWarned = false
        guard inExhaustion else { return nil }
        inExhaustion = false
        defer { refusedThisEpisode = 0 }
        return refusedThisEpisode
    }

    // MARK: - Out of file descriptors

    /// Starts an episode if none is running; returns true when it did (the caller warns once).
    func beginExhaustion() -> Bool {
        // Lingering refusals hold fds the daemon now needs: answer them untagged and close.
        for l in lingering {
            send(l.error, tag: nil, to: l.fd)
            close(l.fd)
        }
        lingering.removeAll()
        guard !inExhaustion else { return false }
        inExhaustion = true
        exhaustionEpisodes += 1
        return true
    }

    /// Accepts one waiting connection into the reserve fd's slot and refuses it. Returns false
    /// when there is no reserve or nothing (more) to accept.
    func refuseWithReserve(listener: Int32) -> Bool {
        guard reserve >= 0 else { return false }
        close(reserve)
        reserve = -1
        let fd = clibaio_accept(listener)
        if fd >= 0 {
            refusedNoDescriptors += 1
            refusedThisEpisode += 1
            let error = ControlError.busy("the daemon is out of file descriptors; try again later")
            // No fd to spare for lingering: answer now, tagged if the request is already there.
            if !answerWaitingRequest(fd, error) { send(error, tag: nil, to: fd) }
            close(fd)
        }
        reopenReserve()
        return fd >= 0
    }

    /// The listener leaves epoll until `shouldResumeListening` says the back-off is over.
    func pauseListening(nowNanos: UInt64) { pausedSinceNanos = nowNanos }

    /// Something here waits for time to pass (the back-off, a lingering refusal, the reserve fd
    /// to reopen): the daemon keeps its timer armed meanwhile.
    var needsTimer: Bool { pausedSinceNanos != nil || !lingering.isEmpty || reserve < 0 }

    /// At a timer tick: true when the listener was paused for at least 250 ms (it goes back into
    /// epoll; if fds are still short, the next accept starts a new back-off).
    func shouldResumeListening(nowNanos: UInt64) -> Bool {
        reopenReserve()
        serviceLingering(nowNanos: nowNanos)
        guard let since = pausedSinceNanos, nowNanos &- since >= 250_000_000 else { return false }
        pausedSinceNanos = nil
        return true
    }

    // MARK: - Refusing

    /// Answers lingering refusals whose request arrived, and gives up on those older than 1 s.
    private func serviceLingering(nowNanos: UInt64) {
        lingering.removeAll { l in
            if answerWaitingRequest(l.fd, l.error) {
                return true
            }
            guard nowNanos &- l.sinceNanos >= 1_000_000_000 else { return false }
            send(l.error, tag: nil, to: l.fd)
            close(l.fd)
            return true
        }
    }

    /// When a request (or a hang-up) is already waiting on `fd`: answers it with `error`,
    /// echoing its tag, closes `fd` and returns true. Returns false when nothing arrived yet.
    private func answerWaitingRequest(_ fd: Int32, _ error: ControlError) -> Bool {
        var fds = [Int32](repeating: -1, count: 8)
        var nfds: Int32 = 0
        var flags: Int32 = 0
        let n = clibaio_recv_datagram(fd, buffer.baseAddress, buffer.count, &fds, 8, &nfds, &flags)
        for i in 0..<Int(min(max(nfds, 0), 8)) where fds[i] >= 0 { close(fds[i]) }
        if n < 0 && (-n == EAGAIN || -n == EINTR) { return false }
        if n == 0 && nfds == 0 && clibaio_peer_hung_up(fd) != 1 { return false }
        var tag: JSONValue? = nil
        if n > 0, n <= ControlRequest.maxDatagramSize {
            switch ControlRequest.parse(UnsafeRawBufferPointer(rebasing: buffer[0..<n])) {
            case .success(let request): tag = request.tag
            case .failure(let failure): tag = failure.tag
            }
        }
        if n >= 0 { send(error, tag: tag, to: fd) }
        close(fd)
        return true
    }

    private func send(_ error: ControlError, tag: JSONValue?, to fd: Int32) {
        let reply = ControlReply.error(error, tag: tag)
        _ = reply.withUnsafeBytes { clibaio_send_datagram(fd, $0.baseAddress, $0.count, nil, 0, 1) }
    }
}
