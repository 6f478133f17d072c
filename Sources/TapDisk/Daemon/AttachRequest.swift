import CLibAIO
import Glibc

/// The `attach` command's checks (§3), in the protocol's precedence: `bad-request` (field
/// types), then `busy`, then `invalid-argument` (values and fds).
///
/// Everything checked here came from a client that may be buggy or hostile: the memfd could be
/// a regular file, shrinkable under our mapping (SIGBUS in the daemon), or write-sealed; the
/// "eventfds" could be pipes or semaphores. Nothing is mapped or kept until all checks pass.
struct AttachRequest {
    private let pageOrderToken: JSONNumber
    private let dataPagesToken: JSONNumber
    let protocolName: String?

    /// Field-type checks only (`bad-request`): values are judged after the `busy` check.
    init(_ request: ControlRequest) throws(ControlError) {
        pageOrderToken = try ControlRequest.required(request.integerToken("ring-page-order"), "ring-page-order")
        dataPagesToken = try ControlRequest.required(request.integerToken("data-pages"), "data-pages")
        protocolName = try request.string("protocol")
    }

    /// Value and fd checks (`invalid-argument`); on success the mapping and the two eventfds,
    /// owned. The caller closes every received fd whatever happens (the memfd is not kept: the
    /// mapping holds the memory).
    func validate(fds: [Int32], controlTruncated: Bool, maxRingPageOrder: Int) throws(ControlError) -> RingAttachment {
        guard fds.count == 3, !controlTruncated else {
            throw .invalidArgument("attach needs exactly three fds (shared memory, kick, notify); got \(fds.count)")
        }
        let pageOrder = Int(
            try ControlRequest.value(of: pageOrderToken, "ring-page-order", in: 0...Int64(maxRingPageOrder)))
        let dataPages = Int(
            try ControlRequest.value(of: dataPagesToken, "data-pages", in: 1...Int64(RingLayout.maxDataPages)))
        if let protocolName, protocolName != "x86_64-abi" {
            throw .invalidArgument("unsupported protocol \(protocolName); v1 supports x86_64-abi")
        }
        let memfd = fds[0]
        let seals = clibaio_get_seals(memfd)
        guard seals >= 0 else { throw .invalidArgument("the shared memory fd has no seals interface (not a memfd)") }
        guard seals & clibaio_F_SEAL_SHRINK != 0 else {
            throw .invalidArgument("the memfd must be sealed with F_SEAL_SHRINK")
        }
        guard seals & (clibaio_F_SEAL_WRITE | clibaio_F_SEAL_FUTURE_WRITE) == 0 else {
            throw .invalidArgument("the memfd must not be write-sealed")
        }
        let bytes = RingLayout.sharedBytes(pageOrder: pageOrder, dataPages: dataPages)
        var st = stat()
        guard fstat(memfd, &st) == 0, Int(st.st_size) >= bytes else {
            throw .invalidArgument("the memfd is smaller than the \(bytes) bytes the ring and data pages need")
        }
        for (name, fd) in [("kick", fds[1]), ("notify", fds[2])] {
            var semaphore: Int32 = 0
            let kind = clibaio_fd_is_eventfd(fd, &semaphore)
            guard kind == 1 else { throw .invalidArgument("the \(name) fd is not an eventfd") }
            guard semaphore == 0 else { throw .invalidArgument("the \(name) eventfd must not be a semaphore eventfd") }
            // A blocking notify eventfd whose counter the frontend saturates would block the
            // disk's only thread in write(2) (§2.2): both must be created EFD_NONBLOCK.
            guard clibaio_fd_is_nonblocking(fd) == 1 else {
                throw .invalidArgument("the \(name) eventfd must be non-blocking (EFD_NONBLOCK)")
            }
        }
        // One eventfd as both would read the daemon's own notifications back as kicks.
        guard clibaio_eventfds_are_same_file(fds[1], fds[2]) != 1 else {
            throw .invalidArgument("kick and notify must be two different eventfds")
        }
        let mapping: SharedMapping
        do {
            mapping = try SharedMapping(rawFD: memfd, byteCount: bytes)
        } catch {
            throw .invalidArgument("cannot map the memfd shared and writable: \(error.name)")
        }
        return RingAttachment(
            mapping: mapping, kick: try Self.duplicate(fds[1]), notify: try Self.duplicate(fds[2]),
            pageOrder: pageOrder, dataPages: dataPages)
    }

    private static func duplicate(_ fd: Int32) throws(ControlError) -> FileDescriptor {
        do {
            return try FileDescriptor.duplicate(raw: fd)
        } catch {
            throw .internalError("dup: \(error.name)")
        }
    }
}
