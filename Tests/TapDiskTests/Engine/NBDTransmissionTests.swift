import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// The transmission phase against a client that misbehaves at the socket level: one that stops
/// reading its replies is disconnected once its output has not moved for `stallNanos`, and the
/// requests it had in the engine complete and are dropped, every slot and buffer coming back.
@Suite struct NBDTransmissionTests {
    /// `count` reads of `length` bytes at offset 0, as one burst.
    static func reads(_ rig: NBDRig, count: Int, length: UInt32) -> Int {
        var at = 0
        for i in 0..<count {
            let h = NBDRequestHeader(type: NBDCommand.read.rawValue, cookie: UInt64(i), offset: 0, length: length)
            var bytes: [UInt8] = []
            h.append(to: &bytes)
            bytes.withUnsafeBytes { (rig.requests + at).copyMemory(from: $0.baseAddress!, byteCount: 28) }
            at += 28
        }
        var sent = 0
        while sent < at {
            let n = send(rig.client, rig.requests + sent, at - sent, Int32(MSG_DONTWAIT))
            if n > 0 { sent += n }
            rig.loop.step(rig, maxWaitMilliseconds: 0)
        }
        return at
    }

    @Test func aClientThatStopsReadingIsDisconnectedAndItsSlotsComeBack() throws {
        let rig = try NBDRig(imageBytes: 16 << 20, structured: false)
        // 4 MiB of replies: far more than the socket buffers hold, so the queue stops moving.
        _ = Self.reads(rig, count: 32, length: 128 << 10)
        #expect(
            DiskLoopTestWait.until(seconds: 10) {
                rig.loop.step(rig, maxWaitMilliseconds: 10)
                return rig.engine.inFlight == 0
            })
        #expect(rig.nbd.connectionCount == 1)
        #expect(rig.nbd.freeSlotCount < rig.nbd.slotCapacity, "replies should be stuck in the queue")
        // Not stalled yet by the clock; stalled 31 s later.
        #expect(rig.nbd.disconnectStalled(now: MonotonicClock.nanoseconds()) == 0)
        #expect(rig.nbd.disconnectStalled(now: MonotonicClock.nanoseconds() + 31_000_000_000) == 1)
        #expect(rig.nbd.connectionCount == 0)
        #expect(rig.nbd.freeSlotCount == rig.nbd.slotCapacity)
        #expect(rig.nbd.pool.freeCount == rig.nbd.pool.chunkCount)
        #expect(rig.nbd.closedSinceLastLook.count == 1)
        // The client reads what was in the socket buffers, then end of file.
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var eof = false
        for _ in 0..<10_000 where !eof {
            let n = recv(rig.client, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if n == 0 { eof = true } else if n < 0 { usleep(1000) }
        }
        #expect(eof)
    }

    @Test func aHardDisconnectWithRequestsInTheEngineDropsTheirReplies() throws {
        let rig = try NBDRig(imageBytes: 16 << 20, structured: true)
        _ = Self.reads(rig, count: 16, length: 4096)
        // Whatever is in flight now completes after the disconnect and must touch nothing.
        rig.nbd.disconnect(0)
        #expect(
            DiskLoopTestWait.until(seconds: 10) {
                rig.loop.step(rig, maxWaitMilliseconds: 10)
                return rig.engine.inFlight == 0 && rig.nbd.connectionCount == 0
            })
        #expect(rig.nbd.freeSlotCount == rig.nbd.slotCapacity)
        #expect(rig.nbd.pool.freeCount == rig.nbd.pool.chunkCount)
    }
}
