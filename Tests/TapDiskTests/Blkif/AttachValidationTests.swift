import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// docs/protocol.md §3: every reason to refuse an attach, the state rules of §2.2, and the rule that
/// the daemon closes every fd it receives and does not keep.
@Suite struct AttachValidationTests {
    /// One bad attach: the fds to send (owned by `keep` until sent) and the arguments.
    struct BadAttach: CustomStringConvertible, Sendable {
        var description: String
        var order = 0
        var dataPages = 16
        var extra = ""
        /// Words the refusal's message must contain (the rule that refused it), when given.
        var phrase: String? = nil
        /// Builds the fds; the returned object keeps them open until the request is sent.
        var make: @Sendable (_ f: BlockFrontend) throws -> (fds: [Int32], keep: [AnyObject])
    }

    static let ringBytes = RingLayout.sharedBytes(pageOrder: 0, dataPages: 16)

    static let badAttaches: [BadAttach] = [
        BadAttach(description: "no fds") { _ in ([], []) },
        BadAttach(description: "two fds") { f in ([f.memory.rawValue, f.kick.rawValue], []) },
        BadAttach(description: "four fds") { f in
            ([f.memory.rawValue, f.kick.rawValue, f.notify.rawValue, f.kick.rawValue], [])
        },
        BadAttach(description: "eight fds") { f in
            (Array(repeating: [f.memory.rawValue, f.kick.rawValue], count: 4).flatMap { $0 }, [])
        },
        BadAttach(description: "memfd without sealing") { f in
            let m = try Holder(DaemonTest.memfd(bytes: ringBytes, seals: nil))
            return ([m.fd, f.kick.rawValue, f.notify.rawValue], [m])
        },
        BadAttach(description: "sealable memfd, no seals") { f in
            let m = try Holder(DaemonTest.memfd(bytes: ringBytes, seals: 0))
            return ([m.fd, f.kick.rawValue, f.notify.rawValue], [m])
        },
        BadAttach(description: "memfd sealed GROW|SEAL but not SHRINK") { f in
            let m = try Holder(DaemonTest.memfd(bytes: ringBytes, seals: clibaio_F_SEAL_GROW | clibaio_F_SEAL_SEAL))
            return ([m.fd, f.kick.rawValue, f.notify.rawValue], [m])
        },
        BadAttach(description: "memfd with F_SEAL_WRITE") { f in
            let m = try Holder(DaemonTest.memfd(bytes: ringBytes, seals: clibaio_F_SEAL_SHRINK | clibaio_F_SEAL_WRITE))
            return ([m.fd, f.kick.rawValue, f.notify.rawValue], [m])
        },
        BadAttach(description: "memfd with F_SEAL_FUTURE_WRITE") { f in
            let m = try Holder(
                DaemonTest.memfd(bytes: ringBytes, seals: clibaio_F_SEAL_SHRINK | clibaio_F_SEAL_FUTURE_WRITE))
            return ([m.fd, f.kick.rawValue, f.notify.rawValue], [m])
        },
        BadAttach(description: "memfd one page too small") { f in
            let m = try Holder(DaemonTest.memfd(bytes: ringBytes - 4096, seals: clibaio_F_SEAL_SHRINK))
            return ([m.fd, f.kick.rawValue, f.notify.rawValue], [m])
        },
        BadAttach(description: "empty memfd") { f in
            let m = try Holder(DaemonTest.memfd(bytes: 0, seals: clibaio_F_SEAL_SHRINK))
            return ([m.fd, f.kick.rawValue, f.notify.rawValue], [m])
        },
        BadAttach(description: "regular file instead of a memfd") { f in
            let path = try DaemonTest.image(bytes: ringBytes)
            let fd = open(path, O_RDWR)
            unlink(path)
            let h = RawFDs([fd])
            return ([fd, f.kick.rawValue, f.notify.rawValue], [h])
        },
        BadAttach(description: "eventfd instead of the memfd") { f in
            ([f.kick.rawValue, f.kick.rawValue, f.notify.rawValue], [])
        },
        BadAttach(description: "kick is a pipe") { f in
            let p = try DaemonTest.pipePair()
            return ([f.memory.rawValue, p[0], f.notify.rawValue], [p])
        },
        BadAttach(description: "notify is a pipe") { f in
            let p = try DaemonTest.pipePair()
            return ([f.memory.rawValue, f.kick.rawValue, p[1]], [p])
        },
        BadAttach(description: "notify is the memfd") { f in
            ([f.memory.rawValue, f.kick.rawValue, f.memory.rawValue], [])
        },
        BadAttach(description: "kick is a semaphore eventfd") { f in
            let e = try Holder(FileDescriptor.eventFD(semaphore: true))
            return ([f.memory.rawValue, e.fd, f.notify.rawValue], [e])
        },
        BadAttach(description: "notify is a semaphore eventfd") { f in
            let e = try Holder(FileDescriptor.eventFD(semaphore: true))
            return ([f.memory.rawValue, f.kick.rawValue, e.fd], [e])
        },
        BadAttach(description: "kick eventfd without EFD_NONBLOCK", phrase: "kick eventfd must be non-blocking") { f in
            let e = try Holder(FileDescriptor.eventFD(nonBlocking: false))
            return ([f.memory.rawValue, e.fd, f.notify.rawValue], [e])
        },
        BadAttach(description: "notify eventfd without EFD_NONBLOCK", phrase: "notify eventfd must be non-blocking") {
            f in
            let e = try Holder(FileDescriptor.eventFD(nonBlocking: false))
            return ([f.memory.rawValue, f.kick.rawValue, e.fd], [e])
        },
        BadAttach(description: "kick and notify are the same fd", phrase: "two different eventfds") { f in
            ([f.memory.rawValue, f.kick.rawValue, f.kick.rawValue], [])
        },
        BadAttach(description: "notify is a dup of kick (one open file)", phrase: "two different eventfds") { f in
            let d = RawFDs([dup(f.kick.rawValue)])
            return ([f.memory.rawValue, f.kick.rawValue, d[0]], [d])
        },
        BadAttach(description: "ring-page-order above the maximum", order: 5) { f in
            let m = try Holder(
                DaemonTest.memfd(
                    bytes: RingLayout.sharedBytes(pageOrder: 5, dataPages: 16), seals: clibaio_F_SEAL_SHRINK))
            return ([m.fd, f.kick.rawValue, f.notify.rawValue], [m])
        },
        BadAttach(description: "data-pages 0", dataPages: 0) { f in
            ([f.memory.rawValue, f.kick.rawValue, f.notify.rawValue], [])
        },
        BadAttach(description: "data-pages 262145", dataPages: 262_145) { f in
            let m = try Holder(
                DaemonTest.memfd(
                    bytes: RingLayout.sharedBytes(pageOrder: 0, dataPages: 262_145), seals: clibaio_F_SEAL_SHRINK))
            return ([m.fd, f.kick.rawValue, f.notify.rawValue], [m])
        },
        BadAttach(description: "memfd smaller than data-pages need", dataPages: 17) { f in
            ([f.memory.rawValue, f.kick.rawValue, f.notify.rawValue], [])
        },
        BadAttach(description: "unknown protocol", extra: #","protocol":"x86_32-abi""#) { f in
            ([f.memory.rawValue, f.kick.rawValue, f.notify.rawValue], [])
        },
        BadAttach(description: "empty protocol", extra: #","protocol":"""#) { f in
            ([f.memory.rawValue, f.kick.rawValue, f.notify.rawValue], [])
        },
        BadAttach(description: "req_prod - rsp_prod > ring-entries") { f in
            f.ringBase.storeBytes(of: UInt32(33).littleEndian, toByteOffset: RingLayout.reqProdOffset, as: UInt32.self)
            return ([f.memory.rawValue, f.kick.rawValue, f.notify.rawValue], [])
        },
    ]

    /// Each refusal is `invalid-argument`, leaves the daemon idle, and a correct attach right
    /// after it on the same connection serves I/O.
    @Test(arguments: badAttaches)
    func refusedAttachIsInvalidArgumentAndAFreshAttachWorks(_ bad: BadAttach) throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        let f = try BlockFrontend(pageOrder: 0, dataPages: 16)
        let (fds, keep) = try bad.make(f)
        let reply = try DaemonTest.raw(
            client,
            DaemonTest.attachText(
                order: "\(bad.order)", dataPages: "\(bad.dataPages)", extra: bad.extra + #","tag":"t""#), fds: fds)
        withExtendedLifetime(keep) {}
        #expect(DaemonTest.code(reply) == "invalid-argument", "\(bad): \(reply)")
        #expect(DaemonTest.isWellFormedError(reply) && reply["tag"] == .string("t"))
        if let phrase = bad.phrase {
            let message = reply["error"]?.objectValue?["message"]?.stringValue ?? ""
            #expect(message.contains(phrase), "\(bad): \(message)")
        }
        let s = try client.call("status")
        #expect(s["attached"] == .bool(false) && s["state"] == .string("idle"))
        let driver = try DiskDriver(socketPath: daemon.socketPath, pageOrder: 0, dataPages: 16)
        #expect(driver.roundTrip(sector: 8, seed: 77))
        try DaemonTest.expectInvariant(client)
    }

    /// Boundary values that must be accepted: the largest ring, the largest data-pages, the
    /// explicit protocol name, extra seals, a memfd larger than needed.
    @Test func boundaryAttachesAreAccepted() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        func attachAndDetach(order: Int, dataPages: Int, memfd: Int32, kick: Int32, notify: Int32, extra: String = "")
            throws -> JSONObject
        {
            let reply = try DaemonTest.raw(
                client, DaemonTest.attachText(order: "\(order)", dataPages: "\(dataPages)", extra: extra),
                fds: [memfd, kick, notify])
            if reply["ok"] == .bool(true) { try client.call("detach") }
            return reply
        }
        let k = try FileDescriptor.eventFD()
        let n = try FileDescriptor.eventFD()
        for order in 0...4 {
            let bytes = RingLayout.sharedBytes(pageOrder: order, dataPages: 1)
            let m = try DaemonTest.memfd(bytes: bytes, seals: clibaio_F_SEAL_SHRINK)
            let r = try attachAndDetach(
                order: order, dataPages: 1, memfd: m.rawValue, kick: k.rawValue, notify: n.rawValue)
            #expect(r["ring-entries"]?.uint64Value == [32, 64, 128, 256, 512][order], "order \(order)")
            #expect(r["state"] == .string("running"))
        }
        let big = try DaemonTest.memfd(
            bytes: RingLayout.sharedBytes(pageOrder: 0, dataPages: 262_144),
            seals: clibaio_F_SEAL_SHRINK | clibaio_F_SEAL_GROW | clibaio_F_SEAL_SEAL)
        let r1 = try attachAndDetach(
            order: 0, dataPages: 262_144, memfd: big.rawValue, kick: k.rawValue, notify: n.rawValue,
            extra: #","protocol":"x86_64-abi""#)
        #expect(r1["ok"] == .bool(true), "\(r1)")
        let larger = try DaemonTest.memfd(bytes: 1 << 20, seals: clibaio_F_SEAL_SHRINK)
        let r2 = try attachAndDetach(
            order: 1, dataPages: 4, memfd: larger.rawValue, kick: k.rawValue, notify: n.rawValue)
        #expect(r2["ok"] == .bool(true), "\(r2)")
        // req_prod - rsp_prod == ring-entries is legal (a full ring published before attach).
        let f = try BlockFrontend(pageOrder: 0, dataPages: 16, startIndex: 0xFFFF_FFF0)
        for i in 0..<32 {
            f.enqueue(
                BlkifRequest.read(id: UInt64(i), sector: UInt64(i) * 8, segments: [BlkifSegment(gref: UInt32(i % 16))]))
        }
        var ring = f.ring
        _ = ring.pushRequests()
        let r3 = try DaemonTest.raw(
            client, DaemonTest.attachText(), fds: [f.memory.rawValue, f.kick.rawValue, f.notify.rawValue])
        #expect(r3["ok"] == .bool(true), "\(r3)")
        // Served without a kick.
        var got = 0
        #expect(
            DaemonTest.waitUntil(seconds: 10) {
                _ = f.reap { r in if r.status == 0 { got += 1 } }
                return got == 32
            })
        try client.call("detach")
        try DaemonTest.expectInvariant(client)
    }

    @Test func secondAttachIsBusyAndTheFirstFrontendKeepsWorking() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let first = try DiskDriver(socketPath: daemon.socketPath)
        #expect(first.roundTrip(sector: 0, seed: 1))
        let other = try daemon.client()
        let f = try BlockFrontend(pageOrder: 2, dataPages: 64)
        for round in UInt64(0)..<3 {
            let r = try other.request(
                "attach", DaemonTest.attachArguments(order: 2, dataPages: 64),
                fds: [f.memory.rawValue, f.kick.rawValue, f.notify.rawValue])
            #expect(DaemonTest.code(r) == "busy")
            // The owner asking again is busy too.
            let again = try first.control.request(
                "attach", DaemonTest.attachArguments(order: 2, dataPages: 64),
                fds: [f.memory.rawValue, f.kick.rawValue, f.notify.rawValue])
            #expect(DaemonTest.code(again) == "busy")
            #expect(first.roundTrip(sector: 16, seed: 2 + round))
        }
        // The refused frontend's eventfd was never signalled by the daemon.
        var p = pollfd(fd: f.notify.rawValue, events: Int16(POLLIN), revents: 0)
        #expect(poll(&p, 1, 0) == 0)
        try DaemonTest.expectInvariant(other)
    }

    /// §2.2 state rules with nothing attached and while running.
    @Test func stateRulesNotAttachedAndWrongState() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        for cmd in ["pause", "resume", "detach"] {
            let r = try DaemonTest.raw(client, "{\"cmd\":\"\(cmd)\",\"tag\":\"\(cmd)\"}")
            #expect(DaemonTest.code(r) == "not-attached", "\(cmd) with nothing attached")
            #expect(r["tag"] == .string(cmd))
        }
        #expect(DaemonTest.code(try client.request("resume", ["fail-held": true])) == "not-attached")
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        #expect(DaemonTest.code(try client.request("resume")) == "wrong-state")
        #expect(DaemonTest.code(try client.request("resume", ["fail-held": true])) == "wrong-state")
        #expect(try client.call("status")["state"] == .string("running"))
        #expect(driver.roundTrip(sector: 0, seed: 5))
        // After a detach: not-attached again.
        _ = try driver.disk.detach()
        for cmd in ["pause", "resume", "detach"] {
            #expect(DaemonTest.code(try client.request(cmd)) == "not-attached", "\(cmd) after detach")
        }
    }

    /// More fds than the daemon's control buffer holds: the ancillary data is truncated
    /// (MSG_CTRUNC), which is `invalid-argument` even when the first three fds are right; every
    /// fd that arrived is closed.
    @Test func truncatedAncillaryDataIsInvalidArgument() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        _ = try client.call("info")
        let baseline = DaemonTest.baselineFDCount(daemon, liveConnections: 1)
        let f = try BlockFrontend(pageOrder: 0, dataPages: 16)
        for count in [9, 16, 64, 250] {
            let fds =
                [f.memory.rawValue, f.kick.rawValue, f.notify.rawValue]
                + Array(repeating: f.kick.rawValue, count: count - 3)
            try DaemonTest.sendManyFDs(client, DaemonTest.attachText(extra: #","tag":\#(count)"#), fds: fds)
            let reply = try client.receiveReply(timeoutMilliseconds: 5000)
            #expect(DaemonTest.code(reply) == "invalid-argument", "\(count) fds")
            #expect(reply["tag"]?.int64Value == Int64(count))
            try DaemonTest.sendManyFDs(client, #"{"cmd":"info"}"#, fds: fds)
            #expect(try client.receiveReply()["ok"] == .bool(true))
        }
        // The daemon closes received fds right after sending the reply: poll briefly.
        #expect(DaemonTest.waitUntil(seconds: 5) { DaemonTest.fdCount(pid: daemon.pid) <= baseline })
        #expect(try client.call("status")["attached"] == .bool(false))
        let driver = try DiskDriver(socketPath: daemon.socketPath, pageOrder: 0, dataPages: 16)
        #expect(driver.roundTrip(sector: 0, seed: 3))
    }

    /// The daemon closes every fd it receives and does not keep: its fd table is the same after
    /// many refused attaches, fds sent with other commands and with malformed datagrams, and
    /// after attach/detach cycles.
    @Test func receivedFdsAreClosed() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        _ = try client.call("info")
        let baseline = DaemonTest.baselineFDCount(daemon, liveConnections: 1)
        #expect(baseline > 0)
        let f = try BlockFrontend(pageOrder: 0, dataPages: 16)
        let three = [f.memory.rawValue, f.kick.rawValue, f.notify.rawValue]
        for round in 0..<4 {
            for bad in Self.badAttaches {
                let (fds, keep) = try bad.make(f)
                let r = try DaemonTest.raw(
                    client,
                    DaemonTest.attachText(order: "\(bad.order)", dataPages: "\(bad.dataPages)", extra: bad.extra),
                    fds: fds)
                withExtendedLifetime(keep) {}
                #expect(DaemonTest.code(r) == "invalid-argument", "\(bad) round \(round)")
            }
            f.ringBase.storeBytes(of: UInt32(0), toByteOffset: RingLayout.reqProdOffset, as: UInt32.self)
            for text in [
                #"{"cmd":"info"}"#, #"{"cmd":"status"}"#, #"{"cmd":"nope"}"#, "garbage", "", #"{"cmd":"detach"}"#,
                #"{"cmd":"subscribe"}"#,
            ] {
                _ = try DaemonTest.raw(client, text, fds: three)
            }
            _ = try DaemonTest.raw(client, DaemonTest.attachText(order: "1.5"), fds: three)
            // Attach and detach: the memfd is not kept, the eventfds are released at detach.
            let ok = try DaemonTest.raw(client, DaemonTest.attachText(), fds: three)
            #expect(ok["ok"] == .bool(true))
            #expect(DaemonTest.code(try client.request("attach", DaemonTest.attachArguments(), fds: three)) == "busy")
            try client.call("detach")
        }
        #expect(DaemonTest.waitUntil(seconds: 5) { DaemonTest.fdCount(pid: daemon.pid) <= baseline })
        // Some connections opened and closed: accounted for too.
        for _ in 0..<10 { _ = try daemon.client().call("info") }
        #expect(DaemonTest.waitUntil(seconds: 5) { DaemonTest.fdCount(pid: daemon.pid) <= baseline })
    }
}

/// Keeps a noncopyable FileDescriptor alive as a reference (for `keep` lists).
final class Holder {
    let descriptor: FileDescriptor
    var fd: Int32 { descriptor.rawValue }
    init(_ d: consuming FileDescriptor) { descriptor = d }
}
