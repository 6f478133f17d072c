import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// Helpers for the vhost-user suites: raw messages over a real socketpair, memfd-backed guest
/// memory, and a split ring the tests write as a (possibly hostile) guest driver would.
enum VhostUserTest {
    /// A connected AF_UNIX SOCK_STREAM pair; the receiving side times out after 2 s so a reader
    /// that wrongly waits for bytes never sent fails instead of hanging.
    struct SocketPair: ~Copyable {
        let tx: FileDescriptor
        let rx: FileDescriptor
    }

    static func socketPair() throws -> SocketPair {
        var sv: [Int32] = [-1, -1]
        _ = try Errno.check(clibaio_stream_socketpair(&sv))
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return SocketPair(tx: FileDescriptor(adopting: sv[0]), rx: FileDescriptor(adopting: sv[1]))
    }

    struct NoMessage: Error {}

    /// The next message; throws when the peer closed instead.
    static func next(_ socket: borrowing FileDescriptor) throws -> VhostUserMessage {
        guard let m = try VhostUserMessage.receive(from: socket.rawValue) else { throw NoMessage() }
        return m
    }

    static func header(_ request: UInt32, flags: UInt32 = 1, size: Int) -> [UInt8] {
        var b: [UInt8] = []
        VhostUserHeader(request: request, flags: flags, size: UInt32(size)).append(to: &b)
        return b
    }

    static func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian) { Array($0) }
    }

    static func message(_ request: VhostUserRequest, flags: UInt32 = 1, payload: [UInt8] = []) -> [UInt8] {
        header(request.rawValue, flags: flags, size: payload.count) + payload
    }

    static func send(_ bytes: [UInt8], fds: [Int32] = [], on socket: borrowing FileDescriptor) throws {
        let n = bytes.withUnsafeBytes { b in
            fds.withUnsafeBufferPointer { f in
                clibaio_vhost_send(socket.rawValue, b.baseAddress, b.count, f.baseAddress, Int32(f.count))
            }
        }
        if n < 0 { throw Errno(rawValue: Int32(-n)) }
    }

    static func memoryTablePayload(_ regions: [VhostUserMemoryRegion]) -> [UInt8] {
        var b = le(UInt32(regions.count)) + le(UInt32(0))
        for r in regions {
            b += le(r.guestPhysicalAddress) + le(r.size) + le(r.userAddress) + le(r.mmapOffset)
        }
        return b
    }

    /// A memfd of `bytes` bytes.
    static func memfd(bytes: Int) throws -> FileDescriptor {
        let fd = FileDescriptor(adopting: try Errno.check(clibaio_memfd_create("vhost-test", clibaio_MFD_CLOEXEC)))
        guard ftruncate(fd.rawValue, off_t(bytes)) == 0 else { throw Errno.current }
        return fd
    }

    /// Guest memory from memfds, one per region (each sized mmap_offset + size).
    static func guestMemory(_ regions: [VhostUserMemoryRegion]) throws -> GuestMemory {
        var raw: [Int32] = []
        for r in regions { raw.append(try memfd(bytes: Int(r.mmapOffset + r.size)).release()) }
        let owned = ReceivedDescriptors(adopting: raw)
        return try GuestMemory(regions: regions, descriptors: owned)
    }

    /// Whether `fd` is open in this process.
    static func isOpen(_ fd: Int32) -> Bool { fcntl(fd, F_GETFD) >= 0 }

    /// A duplicate of `fd` numbered ≥ 900, far from the numbers parallel tests are handed, so an
    /// "is it closed" check cannot be fooled by reuse.
    static func highDuplicate(_ fd: borrowing FileDescriptor) -> Int32 { fcntl(fd.rawValue, F_DUPFD_CLOEXEC, 900) }
}
