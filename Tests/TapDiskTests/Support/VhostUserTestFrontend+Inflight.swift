import CLibAIO
import Glibc

@testable import TapDisk

/// INFLIGHT_SHMFD as QEMU's vhost-user-blk drives it: GET_INFLIGHT_FD once (the back-end makes
/// the region), SET_INFLIGHT_FD on every start, and after the back-end died a new connection
/// that hands the same region and the same guest memory to the next back-end, with
/// last_avail_idx reset to used->idx (what QEMU does when GET_VRING_BASE fails).
extension VhostUserTestFrontend {
    /// GET_INFLIGHT_FD for one queue of `queueSize`: keeps the fd the daemon sends.
    func getInflight() throws {
        try send(.getInflightFD, payload: Self.inflightPayload(size: 0, queueSize: queueSize))
        var p = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(timeout * 1000)) > 0 else { throw Failure("no GET_INFLIGHT_FD reply") }
        var header = [UInt8](repeating: 0, count: 12)
        var fds: [Int32] = [-1, -1]
        var count: Int32 = 0
        var deadline: Int64 = 0
        let n = header.withUnsafeMutableBytes { h in
            fds.withUnsafeMutableBufferPointer { f in
                clibaio_vhost_recv_header(socket, h.baseAddress, 12, f.baseAddress, 2, &count, &deadline, 5000)
            }
        }
        guard n == 12, Self.u32(header, 0) == VhostUserRequest.getInflightFD.rawValue, Self.u32(header, 8) == 24,
            count == 1
        else { throw Failure("bad GET_INFLIGHT_FD reply: \(n) bytes, header \(header), \(count) fds") }
        var payload = [UInt8](repeating: 0, count: 24)
        var stray: Int32 = 0
        let m = payload.withUnsafeMutableBytes {
            clibaio_vhost_recv_payload(socket, $0.baseAddress, 24, &stray, &deadline, 5000)
        }
        guard m == 24 else { throw Failure("GET_INFLIGHT_FD payload: \(m)") }
        if inflightFD >= 0 { close(inflightFD) }
        inflightFD = fds[0]
        inflightSize = Self.u64(payload, 0)
        guard Self.u64(payload, 8) == 0, inflightSize >= UInt64(InflightQueue.regionBytes(queueSize: queueSize)) else {
            throw Failure("GET_INFLIGHT_FD reply \(payload)")
        }
    }

    func setInflight() throws {
        try setUp(
            .setInflightFD, payload: Self.inflightPayload(size: inflightSize, queueSize: queueSize),
            fds: [inflightFD])
    }

    /// The whole set-up with INFLIGHT_SHMFD, as QEMU starts (or restarts) the device.
    func startWithInflight() throws {
        extraProtocolFeatures = VhostUserProtocolFeatures.inflightSharedMemory
        try negotiate()
        guard protocolFeatures & VhostUserProtocolFeatures.inflightSharedMemory != 0 else {
            throw Failure("INFLIGHT_SHMFD not offered")
        }
        if inflightFD < 0 { try getInflight() }
        try setInflight()
        try setUpMemory()
        try setUpRing(base: ring.usedIndex)
    }

    /// A new connection to `path` (the next daemon), keeping guest memory, the ring, the
    /// inflight region and every used entry collected so far.
    func reconnect(to path: String) throws {
        try socketReconnect(to: path)
        try startWithInflight()
    }

    /// Only the new connection (the set-up is the caller's).
    func socketReconnect(to path: String) throws {
        disconnect()
        let deadline = MonotonicClock.nanoseconds() + UInt64(timeout * 1e9)
        while true {
            let fd = clibaio_stream_connect(path)
            if fd >= 0 {
                socket = fd
                break
            }
            if MonotonicClock.nanoseconds() > deadline { throw Failure("cannot reconnect to \(path)") }
            usleep(20_000)  // paces the retries while the next daemon starts
        }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(socket, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// What the inflight region says about `head` (the test reads the memfd, as QEMU could).
    func inflightMarked(_ head: Int) -> Bool {
        guard inflightFD >= 0 else { return false }
        var byte: UInt8 = 0
        return pread(inflightFD, &byte, 1, off_t(16 + 16 * head)) == 1 && byte != 0
    }

    static func inflightPayload(size: UInt64, queueSize: Int) -> [UInt8] {
        VhostUserTest.le(size) + VhostUserTest.le(UInt64(0)) + VhostUserTest.le(UInt16(1))
            + VhostUserTest.le(UInt16(queueSize)) + [0, 0, 0, 0]
    }
}
