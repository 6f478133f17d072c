import Foundation
import Glibc
import Testing

@testable import TapDisk

/// §7 `low-space`: one event per downward crossing of `--low-space-threshold`, re-armed when
/// free space is above the threshold again; bytes and percentage forms.
@Suite(.serialized, .enabled(if: LoopFilesystem.isRoot)) struct LowSpaceTests {
    func lowSpaceEvents(_ client: ControlClient, within seconds: Double) throws -> [JSONObject] {
        var events: [JSONObject] = []
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            guard let e = try client.nextEvent(timeoutMilliseconds: 100) else { continue }
            if e["event"]?.stringValue == "low-space" { events.append(e) }
        }
        return events
    }

    @Test(arguments: ["8M", "50%"])
    func eventOncePerDownwardCrossing(threshold: String) throws {
        let fs = try LoopFilesystem(sizeMiB: 16)
        defer { fs.cleanup() }
        let image = fs.mountPoint + "/disk.img"
        #expect(try Shell.run(["truncate", "-s", "64M", image]).status == 0)
        let daemon = try DaemonProcess(image: image, arguments: ["--low-space-threshold", threshold])
        defer { daemon.forceStop() }
        let watcher = try daemon.client()
        try watcher.call("subscribe")
        let limit: UInt64 = threshold == "8M" ? 8 << 20 : try fs.totalBytes() / 2
        #expect(try fs.freeBytes() > limit)
        // Above the threshold: nothing.
        #expect(try lowSpaceEvents(watcher, within: 1.2).isEmpty)
        // Cross it downwards: exactly one event, however long it stays below.
        _ = try fs.fill(leaving: limit / 2)
        let first = try lowSpaceEvents(watcher, within: 2.5)
        #expect(first.count == 1)
        let free = try #require(first.first?["fs-free-bytes"]?.uint64Value)
        #expect(first.first?["threshold-bytes"]?.uint64Value == limit)
        #expect(free < limit)
        // Back above: re-armed; down again: one more.
        fs.removeFiller()
        #expect(try lowSpaceEvents(watcher, within: 1.2).isEmpty)
        _ = try fs.fill(leaving: limit / 2)
        #expect(try lowSpaceEvents(watcher, within: 2.5).count == 1)
        fs.removeFiller()
    }
}
