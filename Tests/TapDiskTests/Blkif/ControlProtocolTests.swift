import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// docs/protocol.md §2 and §2.2 against the real binary: message framing, tags, error codes and their
/// precedence, and the exact fields and JSON types of every reply.
@Suite struct ControlProtocolTests {
    // MARK: - §2.2 reply fields and types

    @Test func infoReplyHasEveryFieldWithItsType() throws {
        let bytes = 16 << 20 + 3 * 512  // not a whole MiB: sectors must be exact
        let daemon = try DaemonProcess(imageBytes: bytes)
        let image = daemon.imagePath
        let client = try daemon.client()
        let reply = try DaemonTest.raw(client, #"{"cmd":"info"}"#)
        #expect(reply["ok"] == .bool(true))
        #expect(reply["tag"] == nil, "a request without a tag gets a reply without one")
        #expect(reply["protocol"]?.numberValue?.text == "1")
        #expect(reply["image"] == .string(image))
        let sectors = try #require(reply["sectors"]?.numberValue)
        #expect(sectors.isInteger && sectors.uint64 == UInt64(bytes / 512))
        let sectorSize = try #require(reply["sector-size"]?.uint64Value)
        let physical = try #require(reply["physical-sector-size"]?.uint64Value)
        #expect(sectorSize >= 512 && sectorSize.nonzeroBitCount == 1)
        #expect(physical >= sectorSize)
        var vfs = statvfs()
        #expect(statvfs(image, &vfs) == 0)
        #expect(physical == UInt64(vfs.f_bsize), "a file's physical sector size is its filesystem block size")
        #expect(reply["readonly"] == .bool(false))
        let features = try #require(reply["features"]?.objectValue)
        #expect(features["flush"] == .bool(true))
        #expect(features["barrier"] == .bool(true))
        let discard: Bool = try #require(features["discard"]?.boolValue as Bool?)
        #expect(discard, "an ext4 file can punch holes")
        let granularity = try #require(features["discard-granularity"]?.uint64Value)
        #expect(discard ? granularity > 0 : granularity == 0)
        #expect(features["indirect-segments"]?.numberValue?.text == "256")
        #expect(reply["max-ring-page-order"]?.numberValue?.text == "4")
        #expect(reply["state"] == .string("idle"))
        #expect(reply["ring-entries"] == nil)
    }

    @Test func readonlyAndMaxRingPageOrderFlagsShowInInfoAndAttach() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20, arguments: ["--readonly", "--max-ring-page-order", "2"])
        let client = try daemon.client()
        let info = try client.call("info")
        #expect(info["readonly"] == .bool(true))
        #expect(info["max-ring-page-order"]?.int64Value == 2)
        #expect(info["features"]?["discard"]?.boolValue == true, "discard is independent of --readonly")

        let tooBig = try BlockFrontend(pageOrder: 3, dataPages: 4)
        let refused = try client.request(
            "attach", DaemonTest.attachArguments(order: 3, dataPages: 4),
            fds: [tooBig.memory.rawValue, tooBig.kick.rawValue, tooBig.notify.rawValue])
        #expect(DaemonTest.code(refused) == "invalid-argument")

        let driver = try DiskDriver(socketPath: daemon.socketPath, pageOrder: 2, dataPages: 4)
        let attach = driver.disk.attachReply
        #expect(attach["ring-entries"]?.numberValue?.text == "128")
        #expect(attach["state"] == .string("running"))
        #expect(attach["readonly"] == .bool(true))
        // Everything info returns is in the attach reply too.
        for key in info.keys where key != "state" && key != "tag" {
            #expect(attach[key] == info[key], "attach reply field \(key)")
        }
        driver.enqueueWrite(id: 1, sector: 0, gref: 0, seed: 1)
        driver.enqueueRead(id: 2, sector: 0, gref: 1)
        driver.push()
        #expect(driver.wait(forResponses: 2))
        #expect(driver.status(1) == -1, "WRITE on a read-only disk is ERROR")
        #expect(driver.status(2) == 0)
        let c = try DaemonTest.expectInvariant(client)
        #expect(c["invalid-requests"] == 1 && c["write-errors"] == 0 && c["read-requests"] == 1)
        #expect(try client.call("status")["io-status"] == .string("ok"), "invalid requests change no io-status")
    }

    @Test func statusReplyHasEveryFieldWithItsType() throws {
        let bytes = 16 << 20
        let daemon = try DaemonProcess(imageBytes: bytes)
        let client = try daemon.client()
        let s = try DaemonTest.raw(client, #"{"cmd":"status"}"#)
        #expect(s["ok"] == .bool(true) && s["tag"] == nil)
        #expect(s["state"] == .string("idle"))
        #expect(s["reason"] == .null)
        #expect(s["io-status"] == .string("ok"))
        #expect(s["in-flight"]?.numberValue?.text == "0")
        #expect(s["held"]?.numberValue?.text == "0")
        #expect(s["attached"] == .bool(false))
        let space = try #require(s["image-space"]?.objectValue)
        let apparent = try #require(space["apparent-bytes"]?.uint64Value)
        let allocated = try #require(space["allocated-bytes"]?.uint64Value)
        let free = try #require(space["fs-free-bytes"]?.uint64Value)
        let overcommit = try #require(space["overcommit-bytes"]?.uint64Value)
        #expect(apparent == UInt64(bytes))
        #expect(allocated < apparent, "a fresh sparse image")
        let unallocated = apparent > allocated ? apparent - allocated : 0
        #expect(overcommit == (unallocated > free ? unallocated - free : 0))
        let uptime1 = try #require(s["uptime-seconds"]?.numberValue)
        #expect(uptime1.isFinite && uptime1.double >= 0 && uptime1.double < 60)
        usleep(30_000)
        let uptime2 = try #require(try client.call("status")["uptime-seconds"]?.doubleValue)
        #expect(uptime2 > uptime1.double)

        // Attached: state running, attached true, reason still null.
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        let s2 = try client.call("status")
        #expect(s2["state"] == .string("running") && s2["attached"] == .bool(true) && s2["reason"] == .null)
        _ = driver
    }

    @Test func statsHasEveryCounterAsAnIntegerAndCountsIO() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        let reply = try DaemonTest.raw(client, #"{"cmd":"stats","tag":"s"}"#)
        #expect(reply["tag"] == .string("s"))
        let zero = try DaemonTest.stats(client)
        for name in DaemonTest.counterNames { #expect(zero[name] == 0, "\(name) starts at 0") }

        let driver = try DiskDriver(socketPath: daemon.socketPath)
        driver.enqueueWrite(id: 1, sector: 0, gref: 0, pages: 2, seed: 5)
        driver.enqueueRead(id: 2, sector: 0, gref: 2, pages: 1)
        driver.disk.frontend.enqueue(BlkifRequest.flush(id: 3))
        driver.disk.frontend.enqueue(BlkifRequest.discard(id: 4, sector: 64, sectors: 8))
        driver.disk.frontend.enqueue(BlkifRequest.make(operation: 99, id: 5, sector: 0))
        driver.disk.frontend.enqueue(BlkifRequest.read(id: 6, sector: 0, segments: [BlkifSegment(gref: 999)]))
        driver.push()
        #expect(driver.wait(forResponses: 6))
        #expect((1...4).allSatisfy { driver.status($0) == 0 })
        #expect(driver.status(5) == -2 && driver.status(6) == -1)
        let c = try DaemonTest.expectInvariant(client)
        #expect(c["write-requests"] == 1 && c["write-bytes"] == 8192)
        #expect(c["read-requests"] == 1 && c["read-bytes"] == 4096)
        #expect(c["flush-requests"] == 1 && c["discard-requests"] == 1 && c["discard-bytes"] == 4096)
        #expect(c["unsupported-requests"] == 1 && c["invalid-requests"] == 1)
        #expect(c["responses-okay"] == 4 && c["responses-error"] == 1 && c["responses-eopnotsupp"] == 1)
        #expect(c["in-flight"] == 0 && c["held"] == 0)
    }

    /// An image on a block device (a loop device over a file): geometry from the device, and
    /// `image-space` all null.
    @Test(.enabled(if: LoopFilesystem.isRoot, "needs root for losetup"))
    func blockDeviceImageHasNullImageSpace() throws {
        let file = try DaemonTest.image(bytes: 8 << 20)
        defer { unlink(file) }
        let device = try Shell.check(["losetup", "--find", "--show", file]).trimmingCharacters(
            in: .whitespacesAndNewlines)
        defer { _ = try? Shell.run(["losetup", "-d", device]) }
        let daemon = try DaemonProcess(image: device)
        defer { daemon.forceStop() }
        let client = try daemon.client()
        let info = try client.call("info")
        #expect(info["sectors"]?.uint64Value == UInt64((8 << 20) / 512))
        #expect(info["sector-size"]?.uint64Value == 512)
        #expect(info["image"] == .string(device))
        let features = try #require(info["features"]?.objectValue)
        let discard: Bool = try #require(features["discard"]?.boolValue as Bool?)
        #expect(
            discard
                ? features["discard-granularity"]!.uint64Value! > 0 : features["discard-granularity"]?.uint64Value == 0)
        let space = try #require(try client.call("status")["image-space"]?.objectValue)
        for key in ["apparent-bytes", "allocated-bytes", "fs-free-bytes", "overcommit-bytes"] {
            #expect(space[key] == .null, "\(key) is null for a block device")
        }
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        #expect(driver.roundTrip(sector: 16, seed: 3))
        _ = try driver.disk.detach()
        #expect(daemon.terminate() == 0)
    }

    // MARK: - §2 tags

    @Test func tagsAreEchoedWithTheirExactTypeAndValue() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        let tags = [
            "0", "-1", "42", "9223372036854775807", "18446744073709551615", "18446744073709551616",
            "123456789012345678901234567890123456789", "-98765432109876543210987654321", "1.5", "-0", "2.50e3",
            #""""#, #""req-1""#, #""\u00e9\"\\ \ud83d\ude00""#, "true", "false", "null",
        ]
        for token in tags {
            let expected = try JSONParser.parse(token)
            for command in ["info", "status", "nope"] {
                let reply = try DaemonTest.raw(client, "{\"cmd\":\"\(command)\",\"tag\":\(token)}")
                #expect(reply["tag"] == expected, "tag \(token) on \(command)")
                if case .number(let n) = expected, case .number(let got)? = reply["tag"] {
                    #expect(got.text == n.text, "number tag echoed token for token")
                }
            }
            // Error replies echo the tag too.
            let missingCmd = try DaemonTest.raw(client, "{\"tag\":\(token)}")
            #expect(DaemonTest.code(missingCmd) == "bad-request" && missingCmd["tag"] == expected)
            let unknown = try DaemonTest.raw(client, "{\"cmd\":\"frobnicate\",\"tag\":\(token)}")
            #expect(DaemonTest.code(unknown) == "unknown-command" && unknown["tag"] == expected)
        }
        // A null tag is present, so it is echoed (as null); an absent tag is not.
        let withNull = try DaemonTest.raw(client, #"{"cmd":"info","tag":null}"#)
        #expect(withNull.contains(key: "tag") && withNull["tag"] == .null)
        let without = try DaemonTest.raw(client, #"{"cmd":"nope"}"#)
        #expect(DaemonTest.code(without) == "unknown-command" && !without.contains(key: "tag"))
    }

    @Test func nonScalarOrNonFiniteTagIsBadRequest() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        for tag in ["[1]", "[]", #"{"a":1}"#, "{}", "1e999", "-1e999"] {
            let reply = try DaemonTest.raw(client, "{\"cmd\":\"info\",\"tag\":\(tag)}")
            #expect(DaemonTest.code(reply) == "bad-request", "tag \(tag)")
            #expect(DaemonTest.isWellFormedError(reply))
            #expect(reply["tag"] == nil, "a bad tag is not echoed")
        }
        #expect(try client.call("info")["ok"] == .bool(true))
    }

    // MARK: - §2 malformed messages

    @Test func malformedMessagesGetTheirErrorCodesAndTheConnectionStaysUsable() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        let cases: [(String, String)] = [
            ("hello", "bad-request"),
            ("{\"cmd\":\"info\"", "bad-request"),
            ("{\"cmd\":\"info\"} {}", "bad-request"),
            ("[1,2]", "bad-request"),
            ("\"info\"", "bad-request"),
            ("42", "bad-request"),
            ("null", "bad-request"),
            ("{}", "bad-request"),
            ("{\"tag\":1}", "bad-request"),
            ("{\"cmd\":5}", "bad-request"),
            ("{\"cmd\":null}", "bad-request"),
            ("{\"cmd\":[\"info\"]}", "bad-request"),
            ("{\"cmd\":true}", "bad-request"),
            ("{\"cmd\":\"\"}", "unknown-command"),
            ("{\"cmd\":\"INFO\"}", "unknown-command"),
            ("{\"cmd\":\"frobnicate\"}", "unknown-command"),
            ("{\"cmd\":\"info\",\"cmd\":\"info\"}", "bad-request"),
            ("{\"cmd\":\"info\",\"x\":1,\"x\":2}", "bad-request"),
            ("{\"cmd\":\"info\",\"tag\":1,\"tag\":1}", "bad-request"),
            ("{\"cmd\":\"info\",\"o\":{\"k\":1,\"k\":1}}", "bad-request"),
        ]
        for (text, code) in cases {
            let reply = try DaemonTest.raw(client, text)
            #expect(DaemonTest.code(reply) == code, "\(text)")
            #expect(DaemonTest.isWellFormedError(reply), "\(text)")
        }
        // Not UTF-8.
        let invalid = try DaemonTest.raw(
            client, Array("{\"cmd\":\"info\",\"x\":\"".utf8) + [0xFF, 0xFE] + Array("\"}".utf8))
        #expect(DaemonTest.code(invalid) == "bad-request")
        // Unknown extra keys are ignored.
        let extra = try DaemonTest.raw(client, #"{"cmd":"info","whatever":[1,{"a":null}],"tag":3}"#)
        #expect(extra["ok"] == .bool(true) && extra["tag"]?.int64Value == 3 && extra["sectors"] != nil)
        #expect(try client.call("status")["state"] == .string("idle"))
    }

    @Test func emptyDatagramIsBadRequestAndTheConnectionStaysUsable() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        for _ in 0..<3 {
            let reply = try DaemonTest.raw(client, [UInt8]())
            #expect(DaemonTest.code(reply) == "bad-request")
            #expect(reply["tag"] == nil)
        }
        #expect(try client.call("info")["ok"] == .bool(true))
        // An empty datagram from an owning frontend does not detach it either.
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        #expect(DaemonTest.code(try DaemonTest.raw(driver.control, [UInt8]())) == "bad-request")
        #expect(try client.call("status")["attached"] == .bool(true))
        #expect(driver.roundTrip(sector: 0, seed: 9))
    }

    /// 65536 bytes is a message; 65537 is `bad-request`, never parsed as a prefix.
    @Test func datagramSizeLimitIsInclusive() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        func padded(_ size: Int, tag: Int) -> [UInt8] {
            let head = "{\"cmd\":\"info\",\"tag\":\(tag),\"pad\":\""
            let tail = "\"}"
            return Array((head + String(repeating: "x", count: size - head.utf8.count - tail.utf8.count) + tail).utf8)
        }
        let exact = padded(65536, tag: 7)
        #expect(exact.count == 65536)
        let ok = try DaemonTest.raw(client, exact)
        #expect(ok["ok"] == .bool(true) && ok["tag"]?.int64Value == 7 && ok["sectors"] != nil)

        let over = padded(65537, tag: 8)
        let refused = try DaemonTest.raw(client, over)
        #expect(DaemonTest.code(refused) == "bad-request")
        #expect(refused["tag"] == nil, "an oversized datagram is not parsed, not even for its tag")
        // A far larger one: the daemon must detect it, not parse its first 64 KiB as a request.
        let huge = padded(200_000, tag: 9)
        #expect(DaemonTest.code(try DaemonTest.raw(client, huge)) == "bad-request")
        // Its prefix would be a valid request if truncated and the rest ignored.
        var prefixValid = Array(#"{"cmd":"info","tag":10}"#.utf8)
        prefixValid += [UInt8](repeating: 0x20, count: 65536 - prefixValid.count)
        #expect(
            try DaemonTest.raw(client, prefixValid)["ok"] == .bool(true), "trailing whitespace inside the limit is fine"
        )
        prefixValid.append(0x20)
        #expect(DaemonTest.code(try DaemonTest.raw(client, prefixValid)) == "bad-request")
        #expect(try client.call("info")["ok"] == .bool(true))
    }

    @Test func repliesComeInRequestOrder() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        let requests = [
            #"{"cmd":"info","tag":1}"#, #"{"cmd":"bogus","tag":2}"#, #"{"cmd":"status","tag":3}"#, "[]",
            #"{"cmd":"stats","tag":5}"#, #"{"cmd":"pause","tag":6}"#, "", #"{"cmd":"subscribe","tag":8}"#,
            #"{"cmd":"info","tag":9}"#,
        ]
        for r in requests { try client.sendRaw(Array(r.utf8)) }
        var tags: [JSONValue?] = []
        var codes: [String?] = []
        for _ in requests {
            let reply = try client.receiveReply(timeoutMilliseconds: 5000)
            tags.append(reply["tag"])
            codes.append(DaemonTest.code(reply))
        }
        #expect(tags == [.int(1), .int(2), .int(3), nil, .int(5), .int(6), nil, .int(8), .int(9)])
        #expect(codes == [nil, "unknown-command", nil, "bad-request", nil, "not-attached", "bad-request", nil, nil])
    }

    // MARK: - §2 integer fields and precedence

    @Test func integerFieldsTakeIntegerTokensOnly() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        let f = try BlockFrontend(pageOrder: 0, dataPages: 16)
        let fds = [f.memory.rawValue, f.kick.rawValue, f.notify.rawValue]
        let mistyped = [
            "1.0", "0.0", "1e2", "0e0", "1E0", "-0.0", "\"1\"", "\"0\"", "true", "false", "null", "[0]", "{}",
        ]
        for token in mistyped {
            let a = try DaemonTest.raw(client, DaemonTest.attachText(order: token), fds: fds)
            #expect(DaemonTest.code(a) == "bad-request", "ring-page-order \(token)")
            let b = try DaemonTest.raw(client, DaemonTest.attachText(dataPages: token), fds: fds)
            #expect(DaemonTest.code(b) == "bad-request", "data-pages \(token)")
        }
        #expect(
            DaemonTest.code(try DaemonTest.raw(client, #"{"cmd":"attach","data-pages":16}"#, fds: fds)) == "bad-request"
        )
        #expect(
            DaemonTest.code(try DaemonTest.raw(client, #"{"cmd":"attach","ring-page-order":0}"#, fds: fds))
                == "bad-request")
        #expect(
            DaemonTest.code(try DaemonTest.raw(client, DaemonTest.attachText(extra: #","protocol":1"#), fds: fds))
                == "bad-request")
        #expect(
            DaemonTest.code(try DaemonTest.raw(client, DaemonTest.attachText(extra: #","protocol":null"#), fds: fds))
                == "bad-request")
        let outOfRange: [(String, String)] = [
            ("-1", "16"), ("5", "16"), ("9", "16"), ("18446744073709551616", "16"), ("-99999999999999999999", "16"),
            ("0", "0"), ("0", "-1"), ("0", "262145"), ("0", "18446744073709551617"), ("0", "4294967312"),
        ]
        for (order, pages) in outOfRange {
            let r = try DaemonTest.raw(client, DaemonTest.attachText(order: order, dataPages: pages), fds: fds)
            #expect(DaemonTest.code(r) == "invalid-argument", "order \(order) data-pages \(pages)")
        }
        #expect(try client.call("status")["attached"] == .bool(false))
        // The same fds still attach when the fields are right.
        let ok = try DaemonTest.raw(client, DaemonTest.attachText(), fds: fds)
        #expect(ok["ok"] == .bool(true) && ok["ring-entries"]?.int64Value == 32)
    }

    @Test func booleanFieldsTakeBooleansOnly() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        let client = try daemon.client()
        try client.call("pause")
        for token in ["1", "0", "\"true\"", "null", "[]"] {
            let r = try DaemonTest.raw(client, "{\"cmd\":\"resume\",\"fail-held\":\(token)}")
            #expect(DaemonTest.code(r) == "bad-request", "fail-held \(token)")
        }
        #expect(try client.call("status")["state"] == .string("paused"), "a refused resume does nothing")
        let r = try client.call("resume", ["fail-held": false])
        #expect(r["resubmitted"]?.numberValue?.text == "0" && r["failed"]?.numberValue?.text == "0")
        #expect(driver.roundTrip(sector: 0, seed: 1))
    }

    /// bad-request before busy before invalid-argument.
    @Test func errorPrecedence() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let client = try daemon.client()
        // Nothing attached: bad-request beats invalid-argument (no fds, bad value, bad type).
        #expect(
            DaemonTest.code(try DaemonTest.raw(client, DaemonTest.attachText(order: "\"x\"", dataPages: "0")))
                == "bad-request")
        #expect(DaemonTest.code(try DaemonTest.raw(client, DaemonTest.attachText(order: "99"))) == "invalid-argument")

        let driver = try DiskDriver(socketPath: daemon.socketPath)
        let f = try BlockFrontend(pageOrder: 0, dataPages: 16)
        let good = [f.memory.rawValue, f.kick.rawValue, f.notify.rawValue]
        // Attached: bad-request beats busy; busy beats invalid-argument.
        #expect(
            DaemonTest.code(try DaemonTest.raw(client, DaemonTest.attachText(order: "1.0"), fds: good)) == "bad-request"
        )
        #expect(DaemonTest.code(try DaemonTest.raw(client, DaemonTest.attachText(dataPages: "true"))) == "bad-request")
        #expect(DaemonTest.code(try DaemonTest.raw(client, #"{"cmd":"attach","tag":[1]}"#)) == "bad-request")
        #expect(DaemonTest.code(try DaemonTest.raw(client, DaemonTest.attachText(), fds: good)) == "busy")
        #expect(
            DaemonTest.code(try DaemonTest.raw(client, DaemonTest.attachText())) == "busy", "busy before the fd count")
        #expect(
            DaemonTest.code(try DaemonTest.raw(client, DaemonTest.attachText(order: "99", dataPages: "0"))) == "busy")
        #expect(
            DaemonTest.code(try DaemonTest.raw(client, DaemonTest.attachText(extra: #","protocol":"sparc""#))) == "busy"
        )
        // The attached frontend is undisturbed.
        #expect(driver.roundTrip(sector: 8, seed: 2))
        try DaemonTest.expectInvariant(client)
    }

    // MARK: - §2 events and the bounded queue

    @Test func subscribedConnectionGetsStateEventsBetweenReplies() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let watcher = try daemon.client()
        let sub = try watcher.call("subscribe")
        #expect(sub["ok"] == .bool(true) && sub.keys.sorted() == ["ok", "tag"])
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        try driver.control.call("pause")
        try driver.control.call("resume")
        _ = try driver.disk.detach()
        let events = try DaemonTest.eventsBeforeReply(watcher)
        let seen = events.map {
            "\($0["event"]?.stringValue ?? "?"):\($0["state"]?.stringValue ?? "?"):\($0["reason"].map { $0.stringValue ?? "null" } ?? "absent")"
        }
        #expect(
            seen == [
                "state-changed:running:null", "state-changed:paused:operator", "state-changed:running:null",
                "state-changed:closing:null", "state-changed:idle:null",
            ])
        #expect(events.allSatisfy { $0["ok"] == nil && $0["tag"] == nil && $0["dropped"] == nil })
        // A connection that did not subscribe gets no events.
        #expect(driver.control.drainQueuedEvents().isEmpty)
        #expect(try driver.control.nextEvent(timeoutMilliseconds: 100) == nil)
    }

    /// A subscriber that never reads: the daemon keeps serving, drops what does not fit, and the
    /// next event that gets through carries `dropped`; received + dropped = emitted.
    @Test func eventsForASlowSubscriberAreDroppedAndCounted() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let sleeper = try daemon.client()
        try sleeper.call("subscribe")
        let driver = try DiskDriver(socketPath: daemon.socketPath)
        let cycles = 600
        let start = MonotonicClock.nanoseconds()
        for _ in 0..<cycles {
            try driver.control.call("pause", timeoutMilliseconds: 5000)
            try driver.control.call("resume", timeoutMilliseconds: 5000)
        }
        #expect(MonotonicClock.nanoseconds() - start < 10_000_000_000, "the daemon never blocks on a slow reader")
        #expect(driver.roundTrip(sector: 0, seed: 4))
        var received = try DaemonTest.eventsBeforeReply(sleeper)
        #expect(received.count < 2 * cycles, "the queue is bounded")
        #expect(received.count >= 64, "at least 64 datagrams are queued")
        // One more event so the last drops are reported.
        try driver.control.call("pause")
        received += try DaemonTest.eventsBeforeReply(sleeper)
        let dropped = received.compactMap { $0["dropped"]?.uint64Value }.reduce(0, +)
        #expect(dropped > 0)
        // Emitted: running (attach), 2 per cycle, and the trigger.
        #expect(
            UInt64(received.count) + dropped == UInt64(2 * cycles + 2),
            "received \(received.count) + dropped \(dropped)")
        #expect(received.last?["state"] == .string("paused"))
        #expect(received.allSatisfy { $0["dropped"] == nil || $0["dropped"]!.uint64Value! > 0 })
    }
}
