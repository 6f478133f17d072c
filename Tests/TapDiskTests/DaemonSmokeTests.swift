import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

@Suite struct DaemonSmokeTests {
    @Test func attachWriteReadDetachAndTerminate() throws {
        let image = try EngineHarness.makeTemporaryImage(bytes: 16 << 20)
        defer { unlink(image) }
        let daemon = try DaemonProcess(image: image)
        let disk = try RemoteDisk(socketPath: daemon.socketPath, pageOrder: 2, dataPages: 64)
        #expect(disk.attachReply["ring-entries"]?.uint64Value == 128)
        #expect(disk.attachReply["state"]?.stringValue == "running")
        Pattern.fill(disk.frontend.page(0), bytes: 4096, seed: 11)
        disk.frontend.enqueue(BlkifRequest.write(id: 1, sector: 8, segments: [BlkifSegment(gref: 0)]))
        disk.frontend.enqueue(BlkifRequest.read(id: 2, sector: 8, segments: [BlkifSegment(gref: 1)]))
        disk.frontend.push()
        var got: [FrontendRing.Response] = []
        for _ in 0..<500 where got.count < 2 {
            _ = disk.waitForResponses(timeoutMilliseconds: 20)
            _ = disk.frontend.reap { got.append($0) }
        }
        #expect(got.count == 2 && got.allSatisfy { $0.status == 0 })
        let status = try disk.control.call("status")
        #expect(status["attached"]?.boolValue == true)
        let d = try disk.detach()
        #expect(d.reqCons == 2)
        daemon.signal(SIGTERM)
        #expect(daemon.waitForExit() == 0)
        #expect(!FileManager.default.fileExists(atPath: daemon.socketPath))
    }
}
