import CLibAIO
import Foundation
import Glibc

@testable import TapDisk

/// A synchronous vhost-user-blk server for tests: the real front-side layers (`VhostUserMessage`,
/// `VhostUserDevice`, `GuestMemory`, `SplitVirtqueue`, `VirtioBlkRequest`) with a deliberately
/// plain data path — preadv/pwritev/fdatasync/punch-hole on the image, one request at a time.
/// It is not how the daemon serves a guest (that is the engine, `Engine+VirtioFront` and
/// `Daemon+VhostUser`, tested against QEMU by `VhostUserDaemonQEMUTests`); it proves the layers
/// alone against a real QEMU and a real Linux virtio_blk driver.
final class VhostUserTestServer {
    let image: FileDescriptor
    var device: VhostUserDevice
    let storage: UnsafeMutableBufferPointer<iovec>
    private(set) var requests: [VhostUserRequest] = []
    private(set) var errors: [String] = []
    private(set) var connections = 0
    /// A front-end is connected (false once it closed and the device was reset).
    private(set) var isConnected = false
    private(set) var completed: [String: Int] = [:]
    /// After each SET_MEM_TABLE: whether every region came sealed against shrinking.
    private(set) var memoryTablesSealed: [Bool] = []

    init(imagePath: String, configuration: VhostUserDeviceConfiguration) throws {
        image = try FileDescriptor.open(imagePath, flags: O_RDWR)
        device = VhostUserDevice(configuration: configuration)
        storage = .allocate(capacity: configuration.iovecCapacity)
        storage.initialize(repeating: iovec())
    }

    deinit { storage.deallocate() }

    /// Serves connections on `listener` (one at a time, reconnects welcome) until `done()`.
    func run(listener: Int32, until done: () -> Bool) {
        var connection: Int32 = -1
        while !done() {
            var fds = [pollfd(fd: connection < 0 ? listener : connection, events: Int16(POLLIN), revents: 0)]
            if connection >= 0, let kick = device.kickDescriptor {
                fds.append(pollfd(fd: kick, events: Int16(POLLIN), revents: 0))
            }
            _ = poll(&fds, nfds_t(fds.count), 100)
            if connection < 0 {
                if fds[0].revents != 0 {
                    connection = accept(listener, nil, nil)
                    if connection >= 0 {
                        connections += 1
                        isConnected = true
                    }
                }
                continue
            }
            if fds[0].revents != 0 && !handleMessage(on: connection) {
                close(connection)
                connection = -1
                device.reset()
                isConnected = false
                continue
            }
            if fds.count > 1, fds[1].revents != 0, let kick = device.kickDescriptor {
                var value: UInt64 = 0
                _ = clibaio_eventfd_drain(kick, &value)
            }
            serve()
        }
        // The front-end process is gone: read what it left until EOF, then disconnect as usual.
        if connection >= 0 {
            while handleMessage(on: connection) {}
            close(connection)
            device.reset()
            isConnected = false
        }
    }

    /// False when the connection ends (orderly close or a protocol error).
    private func handleMessage(on connection: Int32) -> Bool {
        do {
            guard let message = try VhostUserMessage.receive(from: connection) else { return false }
            requests.append(message.request)
            let request = message.request
            if let reply = try device.handle(message) {
                try VhostUserReply.send(reply, on: connection, descriptor: device.takeReplyDescriptor())
            }
            if request == .setMemTable { memoryTablesSealed.append(device.memory.allShrinkSealed) }
            return true
        } catch {
            errors.append("\(error)")
            return false
        }
    }

    private func count(_ key: String) { completed[key, default: 0] += 1 }

    private func serve() {
        while true {
            switch device.pop(into: storage) {
            case .empty:
                device.notifyIfNeeded()
                if !device.enableNotifications() { return }
            case .broken(let fault):
                errors.append("queue broken: \(fault)")
                return
            case .malformed(let head, let error, let status):
                errors.append("malformed chain \(head): \(error)")
                if let status { VirtioBlkStatus.ioError.write(to: status) }
                device.complete(head: head, writtenBytes: status == nil ? 0 : 1)
            case .chain(let chain):
                let (status, written) = execute(chain)
                status.write(to: chain.status)
                device.complete(head: chain.head, writtenBytes: UInt32(written) + 1)
            }
        }
    }

    private func execute(_ c: VirtqueueChain) -> (VirtioBlkStatus, UInt64) {
        let request = VirtioBlkRequest.classify(c, storage: storage, disk: device.configuration.disk)
        switch request {
        case .read(let sector, let bytes):
            count("read")
            let n = preadv(
                image.rawValue, storage.baseAddress! + c.readableSegments, Int32(c.writableSegments),
                off_t(sector * 512))
            return n == Int(bytes) ? (.ok, bytes) : (.ioError, 0)
        case .write(let sector, let bytes):
            count("write")
            let n = pwritev(image.rawValue, storage.baseAddress!, Int32(c.readableSegments), off_t(sector * 512))
            return (n == Int(bytes) ? .ok : .ioError, 0)
        case .flush:
            count("flush")
            return (fdatasync(image.rawValue) == 0 ? .ok : .ioError, 0)
        case .getID(let bytes):
            count("getID")
            let id = Array(device.configuration.serial.prefix(min(Int(bytes), VirtioBlkType.idBytes)))
            var done = 0
            for i in c.readableSegments..<c.segmentCount where done < id.count {
                let take = min(storage[i].iov_len, id.count - done)
                id.withUnsafeBytes { storage[i].iov_base!.copyMemory(from: $0.baseAddress! + done, byteCount: take) }
                done += take
            }
            return (.ok, UInt64(done))
        case .discard(let sector, let sectors), .writeZeroes(let sector, let sectors, _):
            count(c.type == VirtioBlkType.discard ? "discard" : "writeZeroes")
            let rc = clibaio_punch_hole(image.rawValue, Int64(sector * 512), Int64(sectors) * 512)
            return (rc == 0 ? .ok : .ioError, 0)
        case .reject(let status, let why):
            count("reject \(why)")
            return (status, 0)
        }
    }
}
