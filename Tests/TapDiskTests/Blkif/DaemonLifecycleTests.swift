import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// docs/protocol.md §1 (socket file), §6.4 (detach, disconnects, SIGTERM), §5.1 (ring violation →
/// halted), §6.3 (operator pause) against the real binary.
@Suite struct DaemonLifecycleTests {
    // MARK: - detach and re-attach

    @Test func detachReportsCompletedAndReqConsAndReattachSeesTheData() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let toolstack = try daemon.client()
        do {
            let a = try DiskDriver(socketPath: daemon.socketPath)
            for i in 0..<4 {
                a.enqueueWrite(id: UInt64(i), sector: UInt64(i) * 8, gref: UInt32(i), seed: 100 + UInt64(i))
            }
            a.push()
            #expect(a.wait(forResponses: 4))
            #expect((0..<4).allSatisfy { a.status(UInt64($0)) == 0 })
            let reply = try a.control.call("detach")
            #expect(reply["completed"]?.numberValue?.text == "0", "every response was written before detach arrived")
            #expect(reply["req-cons"]?.numberValue?.text == "4")
            #expect(Set(reply.keys) == ["ok", "completed", "req-cons", "tag"])
            let s = try toolstack.call("status")
            #expect(s["attached"] == .bool(false) && s["state"] == .string("idle"))
            // The former owner is an ordinary control connection now.
            #expect(DaemonTest.code(try a.control.request("detach")) == "not-attached")
            #expect(try a.control.call("info")["state"] == .string("idle"))
        }
        // A new frontend whose ring indices wrap around 2^32 reads what the first one wrote.
        let f = try BlockFrontend(pageOrder: 0, dataPages: 8, startIndex: 0xFFFF_FFFE)
        let c = try daemon.client()
        try c.call(
            "attach", DaemonTest.attachArguments(order: 0, dataPages: 8),
            fds: [f.memory.rawValue, f.kick.rawValue, f.notify.rawValue])
        for i in 0..<4 {
            f.enqueue(
                BlkifRequest.read(id: UInt64(i), sector: UInt64(i) * 8, segments: [BlkifSegment(gref: UInt32(i))]))
        }
        f.push()
        var got: [UInt64: Int16] = [:]
        #expect(
            DaemonTest.waitUntil {
                _ = f.reap { got[$0.id] = $0.status }
                return got.count == 4
            })
        for i in 0..<4 {
            #expect(got[UInt64(i)] == 0)
            let expected = Pattern.bytes(count: 4096, seed: 100 + UInt64(i))
            #expect(memcmp(f.page(UInt32(i)), expected, 4096) == 0, "page \(i)")
        }
        let d = try c.call("detach")
        #expect(d["req-cons"]?.uint64Value == 2, "0xFFFFFFFE + 4 wraps to 2")
        let counters = try DaemonTest.expectInvariant(toolstack)
        #expect(counters["write-requests"] == 4 && counters["read-requests"] == 4, "attach does not reset counters")
        #expect(counters["in-flight"] == 0 && counters["held"] == 0)
    }

    /// detach with I/O in flight: every consumed request is answered before the reply, and
    /// `completed` counts the ones answered after the command arrived.
    @Test func detachWithIOInFlightAnswersEverythingConsumed() throws {
        let daemon = try DaemonProcess(imageBytes: 64 << 20)
        let a = try DiskDriver(socketPath: daemon.socketPath, pageOrder: 4, dataPages: 11)
        for i in 0..<11 { Pattern.fill(a.frontend.page(UInt32(i)), bytes: 4096, seed: UInt64(i)) }
        for i in 0..<200 { a.enqueueWrite(id: UInt64(i), sector: UInt64(i) * 88, gref: 0, pages: 11) }
        a.push()
        let reply = try a.control.call("detach", timeoutMilliseconds: 60_000)
        let reqCons = try #require(reply["req-cons"]?.uint64Value)
        let completed = try #require(reply["completed"]?.uint64Value)
        a.collect()
        #expect(UInt64(a.responseCount) == reqCons, "every consumed request was answered, nothing more")
        #expect(completed <= reqCons && reqCons <= 200)
        #expect(a.responses.values.allSatisfy { $0 == [0] })
        let c = try DaemonTest.expectInvariant(try daemon.client())
        #expect(c["in-flight"] == 0 && c["held"] == 0)
        #expect(c["write-requests"] == reqCons && c["responses-okay"] == reqCons)
    }

    /// Requests published while paused are not consumed; a detach then answers none of them and
    /// reports the consumer index where it stopped.
    @Test func detachWhilePausedLeavesUnconsumedRequestsUnanswered() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let a = try DiskDriver(socketPath: daemon.socketPath)
        #expect(a.roundTrip(sector: 0, seed: 1))
        try a.control.call("pause")
        for i in 0..<5 { a.enqueueWrite(id: 10 + UInt64(i), sector: 64, gref: 2, seed: 9) }
        a.push()
        #expect(a.kickAndWaitUntilTaken(), "the daemon never read the kick")
        #expect(try DaemonTest.stats(a.control).consumed == 2, "consumed while paused")
        a.collect()
        #expect(a.responseCount == 2, "answered while paused")
        let d = try a.control.call("detach")
        #expect(d["completed"]?.uint64Value == 0)
        #expect(d["req-cons"]?.uint64Value == 2, "only the round trip's two requests were consumed")
        #expect(a.frontend.ring.header.rspProd == 2)
        let c = try DaemonTest.expectInvariant(try daemon.client())
        #expect(c.consumed == 2)
    }

    // MARK: - the owner goes away

    @Test func ownerClosingWithIOInFlightDrainsAndReturnsToIdle() throws {
        let daemon = try DaemonProcess(imageBytes: 64 << 20)
        let watcher = try daemon.client()
        try watcher.call("subscribe")
        do {
            let a = try DiskDriver(socketPath: daemon.socketPath, pageOrder: 4, dataPages: 11)
            // 300 writes of 44 KiB, then `status` at once and, if nothing was in flight yet, again
            // after the first answer. A slow daemon (ASan, TSan, a loaded machine) can have
            // answered every write by the time it reads `status`: then collect them and try
            // again, up to 5 times. What is tested is a close with I/O in flight, so that must be
            // what happens.
            var inFlight: Int64 = 0
            for attempt in 0..<5 where inFlight == 0 {
                if attempt > 0 { #expect(a.wait(forResponses: attempt * 300)) }
                for i in (attempt * 300)..<(attempt * 300 + 300) {
                    a.enqueueWrite(
                        id: UInt64(i), sector: UInt64(i % 300) * 88, gref: 0, pages: 11, seed: i == 0 ? 1 : nil)
                }
                a.push()
                inFlight = try watcher.call("status")["in-flight"]?.int64Value ?? 0
                if inFlight == 0 {
                    #expect(a.wait(forResponses: attempt * 300 + 1))
                    inFlight = try watcher.call("status")["in-flight"]?.int64Value ?? 0
                }
            }
            #expect(inFlight > 0, "I/O is in flight when the frontend dies")
            // `a` (its connection, memfd mapping and eventfds) is released here: the frontend died.
        }
        var skipped: [JSONObject] = []
        let closing = try DaemonTest.nextEvent(watcher, named: "state-changed", seconds: 10, skipped: &skipped)
        #expect(closing?["state"] == .string("running"))
        let next = try DaemonTest.nextEvent(watcher, named: "state-changed", seconds: 10)
        #expect(next?["state"] == .string("closing"))
        let idle = try DaemonTest.nextEvent(watcher, named: "state-changed", seconds: 30)
        #expect(idle?["state"] == .string("idle"))
        let s = try watcher.call("status")
        #expect(s["attached"] == .bool(false) && s["state"] == .string("idle"))
        #expect(s["in-flight"]?.int64Value == 0 && s["held"]?.int64Value == 0)
        let c = try DaemonTest.expectInvariant(watcher)
        #expect(c["write-requests"] > 0 && c["responses-okay"] == c["write-requests"])
        let b = try DiskDriver(socketPath: daemon.socketPath)
        #expect(b.roundTrip(sector: 8, seed: 2))
        try DaemonTest.expectInvariant(watcher)
    }

    /// Any connection may detach; the former owner's later close does not touch a newer attachment.
    @Test func formerOwnerClosingDoesNotAffectANewerAttachment() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let toolstack = try daemon.client()
        try toolstack.call("info")  // accepted: its socket is in `others` below
        let others = DaemonTest.connectedSockets(pid: daemon.pid, path: daemon.socketPath)
        var a: DiskDriver? = try DiskDriver(socketPath: daemon.socketPath)
        #expect(a!.roundTrip(sector: 0, seed: 1))
        // The daemon's end of a's control connection: the one socket its attach added.
        // (Polled, to give the daemon time to accept; `ProcFile` reads /proc/net/unix past its
        // first page, where a new socket is often listed.)
        var former = Set<UInt64>()
        #expect(
            DaemonTest.waitUntil(seconds: 15) {
                former = DaemonTest.connectedSockets(pid: daemon.pid, path: daemon.socketPath).subtracting(others)
                return former.count == 1
            }, "\(former)")
        try toolstack.call("detach")
        let b = try DiskDriver(socketPath: daemon.socketPath)
        a = nil  // the former owner's connection closes
        // Its socket leaves the daemon's fd table only once the daemon has processed the close.
        #expect(
            DaemonTest.waitUntil(seconds: 10) {
                DaemonTest.connectedSockets(pid: daemon.pid, path: daemon.socketPath).isDisjoint(with: former)
            },
            "the daemon has not processed the former owner's close")
        let s = try toolstack.call("status")
        #expect(s["attached"] == .bool(true) && s["state"] == .string("running"))
        #expect(b.roundTrip(sector: 8, seed: 2))
        _ = a
    }

    // MARK: - SIGTERM

    @Test func sigtermWhileBusyDrainsExitsZeroAndRemovesTheSocket() throws {
        let daemon = try DaemonProcess(imageBytes: 64 << 20)
        let image = daemon.imagePath
        let a = try DiskDriver(socketPath: daemon.socketPath, pageOrder: 4, dataPages: 11)
        for i in 0..<11 { Pattern.fill(a.frontend.page(UInt32(i)), bytes: 4096, seed: 50 + UInt64(i)) }
        for i in 0..<200 { a.enqueueWrite(id: UInt64(i), sector: UInt64(i) * 88, gref: 0, pages: 11) }
        a.push()
        daemon.signal(SIGTERM)
        #expect(daemon.waitForExit(timeoutSeconds: 30) == 0)
        #expect(!FileManager.default.fileExists(atPath: daemon.socketPath))
        #expect(!a.disk.waitForResponses(timeoutMilliseconds: 1000), "the owner sees the hang-up")
        a.collect()
        #expect(
            a.responseCount > 0 && a.responses.values.allSatisfy { $0 == [0] },
            "every consumed request was answered OKAY")
        #expect(!a.violation)
        // What was answered is on disk.
        let fd = open(image, O_RDONLY)
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 4096)
        for (id, _) in a.responses {
            #expect(pread(fd, &buf, 4096, off_t(id) * 88 * 512 + 4096 * 3) == 4096)
            #expect(buf == Pattern.bytes(count: 4096, seed: 53), "write \(id)")
        }
        #expect(daemon.log.contains("SIGTERM"))
    }

    @Test func sigtermWhileIdleExitsZeroAndRemovesTheSocket() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let c = try daemon.client()
        #expect(daemon.terminate() == 0)
        #expect(!FileManager.default.fileExists(atPath: daemon.socketPath))
        #expect(throws: ControlClient.ClientError.self) { try c.call("info") }
    }

    // MARK: - §1 socket file

    @Test func staleSocketFileIsReplaced() throws {
        let image = try DaemonTest.image()
        defer { unlink(image) }
        let dir = DaemonProcess.makeDirectory()
        let path = dir + "/disk.sock"
        let stale = clibaio_unix_listen(path, 1)
        #expect(stale >= 0)
        close(stale)  // the file stays, nobody accepts on it
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK)
        let daemon = try DaemonProcess(image: image, directory: dir)
        defer { daemon.forceStop() }
        #expect(try daemon.client().call("info")["image"] == .string(image))
        #expect(daemon.terminate() == 0)
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test func secondDaemonOnALiveSocketExitsNonZeroAndLeavesTheFirstIntact() throws {
        let image = try DaemonTest.image()
        let other = try DaemonTest.image()
        defer {
            unlink(image)
            unlink(other)
        }
        let first = try DaemonProcess(image: image)
        defer { first.forceStop() }
        let driver = try DiskDriver(socketPath: first.socketPath)
        let run = try Tapdiskd.run(["--image", other, "--socket", first.socketPath])
        #expect(run.status != 0)
        #expect(run.stderrLines.count == 1, "one line on stderr: \(run.stderr)")
        #expect(run.stderr.hasPrefix("tapdiskd: "))
        #expect(FileManager.default.fileExists(atPath: first.socketPath))
        let info = try first.client().call("info")
        #expect(info["image"] == .string(image))
        #expect(driver.roundTrip(sector: 0, seed: 3))
        #expect(first.terminate() == 0)
    }

    // MARK: - §5.1 ring violation → halted

    private func haltScenario(bogusReqProd: (_ reqCons: UInt32, _ entries: UInt32) -> UInt32) throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let watcher = try daemon.client()
        try watcher.call("subscribe")
        let a = try DiskDriver(socketPath: daemon.socketPath)
        #expect(a.roundTrip(sector: 0, seed: 1))
        #expect(a.roundTrip(sector: 8, seed: 2))
        _ = try DaemonTest.eventsBeforeReply(watcher)
        let header = a.frontend.ring.header
        let reqCons = header.reqProd  // everything published was consumed
        header.storeReleasing(RingLayout.reqProdOffset, bogusReqProd(reqCons, a.frontend.entries))
        a.frontend.kick.signal()
        var skipped: [JSONObject] = []
        let violation = try DaemonTest.nextEvent(watcher, named: "frontend-violation", skipped: &skipped)
        #expect(skipped.isEmpty, "no state change before the violation event: \(skipped)")
        #expect(violation?["message"]?.stringValue?.isEmpty == false)
        let changed = try DaemonTest.nextEvent(watcher, named: "state-changed")
        #expect(changed?["state"] == .string("halted") && changed?["reason"] == .string("frontend-violation"))
        let s = try watcher.call("status")
        #expect(
            s["state"] == .string("halted") && s["reason"] == .string("frontend-violation")
                && s["attached"] == .bool(true))
        // Consumes nothing more, even once req_prod is sane again and kicked.
        header.storeReleasing(RingLayout.reqProdOffset, reqCons &+ 1)
        let answered = a.responseCount
        #expect(a.kickAndWaitUntilTaken(), "the daemon never read the kick")
        #expect(try DaemonTest.stats(watcher).consumed == UInt64(reqCons), "consumed while halted")
        a.collect()
        #expect(a.responseCount == answered, "answered while halted")
        #expect(DaemonTest.code(try watcher.request("pause")) == "wrong-state")
        #expect(DaemonTest.code(try watcher.request("resume")) == "wrong-state")
        #expect(try watcher.call("status")["state"] == .string("halted"), "stays halted until detach")
        let d = try watcher.call("detach")
        #expect(d["req-cons"]?.uint64Value == UInt64(reqCons))
        let c = try DaemonTest.expectInvariant(watcher)
        #expect(c.consumed == 4)
        let b = try DiskDriver(socketPath: daemon.socketPath)
        #expect(b.roundTrip(sector: 16, seed: 3))
    }

    @Test func impossibleReqProdHaltsTheDisk() throws {
        try haltScenario { reqCons, entries in reqCons &+ entries &+ 5 }
    }

    @Test func reqProdMovingBackwardsHaltsTheDisk() throws {
        try haltScenario { reqCons, _ in reqCons &- 1 }
    }

    // MARK: - §6.3 operator pause

    @Test func operatorPauseWaitsForInFlightAndLeavesNewRequestsInTheRing() throws {
        let daemon = try DaemonProcess(imageBytes: 64 << 20)
        let watcher = try daemon.client()
        try watcher.call("subscribe")
        let a = try DiskDriver(socketPath: daemon.socketPath, pageOrder: 4, dataPages: 16)
        for i in 0..<11 { Pattern.fill(a.frontend.page(UInt32(i)), bytes: 4096, seed: UInt64(i)) }
        for i in 0..<100 { a.enqueueWrite(id: UInt64(i), sector: UInt64(i) * 88, gref: 0, pages: 11) }
        a.push()
        let toolstack = try daemon.client()
        let p = try toolstack.call("pause", timeoutMilliseconds: 60_000)
        #expect(Set(p.keys) == ["ok", "tag"])
        // Quiesced when the reply came: nothing in flight, everything consumed is answered.
        let s = try toolstack.call("status")
        #expect(s["state"] == .string("paused") && s["reason"] == .string("operator"))
        #expect(s["in-flight"]?.int64Value == 0 && s["held"]?.int64Value == 0)
        let c1 = try DaemonTest.expectInvariant(toolstack)
        #expect(c1.responses == c1.consumed)
        #expect(a.wait(forResponses: Int(c1.consumed)))
        // Published while paused: stays in the ring.
        for i in 0..<4 { a.enqueueWrite(id: 1000 + UInt64(i), sector: UInt64(i) * 8, gref: 12) }
        a.push()
        let answered = a.responseCount
        #expect(a.kickAndWaitUntilTaken(), "the daemon never read the kick")
        #expect(try DaemonTest.stats(toolstack).consumed == c1.consumed)
        a.collect()
        #expect(a.responseCount == answered, "answered while paused")
        // pause when paused: ok, reason unchanged, no new event.
        try watcher.call("pause")
        let s2 = try watcher.call("status")
        #expect(s2["state"] == .string("paused") && s2["reason"] == .string("operator"))
        let r = try toolstack.call("resume")
        #expect(r["resubmitted"]?.numberValue?.text == "0" && r["failed"]?.numberValue?.text == "0")
        #expect(a.wait(forResponses: 104))
        #expect(a.responses.values.allSatisfy { $0 == [0] })
        #expect(DaemonTest.code(try toolstack.request("resume")) == "wrong-state")
        let events = try DaemonTest.eventsBeforeReply(watcher)
        let states = events.filter { $0["event"] == .string("state-changed") }.map { $0["state"]?.stringValue ?? "?" }
        #expect(states == ["running", "paused", "running"], "\(events)")
        let c2 = try DaemonTest.expectInvariant(toolstack)
        #expect(c2["write-requests"] == 104 && c2["responses-okay"] == 104)
    }

    /// Owed replies go out as soon as their condition holds, even when the client pipelines
    /// commands (a regression test: they used to wait for the 500 ms timer).
    @Test func pipelinedPauseResumeAndDetachAreAnsweredPromptly() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let a = try DiskDriver(socketPath: daemon.socketPath)
        let start = MonotonicClock.nanoseconds()
        for _ in 0..<100 {
            try a.control.call("pause")
            try a.control.call("resume")
        }
        #expect(MonotonicClock.nanoseconds() - start < 3_000_000_000, "100 pause/resume cycles")
        let t = MonotonicClock.nanoseconds()
        for text in [
            #"{"cmd":"pause","tag":1}"#, #"{"cmd":"pause","tag":2}"#, #"{"cmd":"resume","tag":3}"#,
            #"{"cmd":"pause","tag":4}"#, #"{"cmd":"detach","tag":5}"#, #"{"cmd":"status","tag":6}"#,
        ] {
            try a.control.sendRaw(Array(text.utf8))
        }
        var tags: [Int64] = []
        for _ in 0..<6 { tags.append(try a.control.receiveReply(timeoutMilliseconds: 5000)["tag"]?.int64Value ?? -1) }
        #expect(tags == [1, 2, 3, 4, 5, 6])
        #expect(MonotonicClock.nanoseconds() - t < 400_000_000, "no reply waited for the timer")
    }
}
