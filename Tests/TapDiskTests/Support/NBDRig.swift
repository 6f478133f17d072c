import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// An NBD client on one end of a socketpair and the engine's NBD front on the other, in this
/// process, driven through the daemon's own `DiskLoop`. Requests and replies live in buffers
/// allocated before measuring, so every allocation counted is the server's.
final class NBDRig: DiskLoopHost {
    let engine: Engine
    let loop: DiskLoop
    let nbd: NBDTransmission
    let client: Int32
    let server: Int32
    let imagePath: String
    let requests: UnsafeMutableRawPointer
    let replies: UnsafeMutableRawPointer
    static let token = DiskLoop.Token.firstHostToken
    static let replyRoom = 1 << 20

    init(imageBytes: Int, structured: Bool) throws {
        imagePath = try EngineHarness.makeTemporaryImage(bytes: imageBytes)
        let image = try Image(path: imagePath, cache: .none, readOnly: false)
        let g = image.geometry
        engine = try Engine(image: image)
        loop = try DiskLoop(engine: engine)
        let export = NBDExport(name: "a", size: g.sectors * 512, minimumBlockSize: g.sectorSize, readOnly: false)
        nbd = try NBDTransmission(
            export: export, imageFD: engine.image.fd.rawValue, isRegularFile: true, slots: 64, connections: 8,
            poolChunks: 512)
        var fds: [Int32] = [0, 0]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
        client = fds[0]
        server = fds[1]
        try loop.add(
            server, token: Self.token,
            events: clibaio_EPOLLIN | clibaio_EPOLLOUT | clibaio_EPOLLRDHUP | clibaio_EPOLLET)
        try engine.attachNBD(nbd)
        let session = NBDSession(
            structuredReplies: structured, allocationContext: nil,
            transmissionFlags: export.transmissionFlags(structuredReplies: structured), agreedBlockSize: true,
            exportName: "a")
        _ = try #require(nbd.adopt(fd: server, session: session, leftover: [], peer: "test", now: 0))
        requests = .allocate(byteCount: 64 * (28 + 4096), alignment: 16)
        replies = .allocate(byteCount: Self.replyRoom, alignment: 16)
    }

    deinit {
        close(client)
        close(server)
        requests.deallocate()
        replies.deallocate()
        unlink(imagePath)
    }

    func dispatch(_ ready: Poller.Ready) {
        if ready.events & clibaio_EPOLLOUT != 0 { nbd.writable(0) }
        if ready.isReadable { nbd.readable(0) }
        engine.service()
    }

    func finishWakeup() -> Bool { false }

    /// `depth` 4 KiB requests at random blocks, sent at once; returns when every reply byte is in.
    func batch(write: Bool, depth: Int, blocks: UInt64, rng: inout UInt64, replyBytes: Int) -> Bool {
        var at = 0
        for i in 0..<depth {
            rng ^= rng << 13
            rng ^= rng >> 7
            rng ^= rng << 17
            let p = requests + at
            p.storeBytes(of: NBDMagic.request.bigEndian, toByteOffset: 0, as: UInt32.self)
            p.storeBytes(of: UInt16(0), toByteOffset: 4, as: UInt16.self)
            p.storeBytes(
                of: (write ? NBDCommand.write : .read).rawValue.bigEndian, toByteOffset: 6, as: UInt16.self)
            p.storeBytes(of: UInt64(i).bigEndian, toByteOffset: 8, as: UInt64.self)
            p.storeBytes(of: ((rng % blocks) * 4096).bigEndian, toByteOffset: 16, as: UInt64.self)
            p.storeBytes(of: UInt32(4096).bigEndian, toByteOffset: 24, as: UInt32.self)
            at += 28 + (write ? 4096 : 0)
        }
        var sent = 0
        var received = 0
        let expected = depth * replyBytes
        var idle = 0
        while received < expected && idle < 10_000 {
            if sent < at {
                let n = send(client, requests + sent, at - sent, Int32(MSG_DONTWAIT))
                if n > 0 { sent += n }
            }
            loop.step(self, maxWaitMilliseconds: sent < at ? 0 : 5)
            let n = recv(client, replies, Self.replyRoom, Int32(MSG_DONTWAIT))
            if n > 0 {
                received += n
                idle = 0
            } else {
                idle += 1
            }
        }
        return received == expected
    }
}
