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
        #expect(DiskDriver(disk).roundTrip(sector: 8, seed: 11))
        let status = try disk.control.call("status")
        #expect(status["attached"]?.boolValue == true)
        let d = try disk.detach()
        #expect(d.reqCons == 2)
        daemon.signal(SIGTERM)
        #expect(daemon.waitForExit() == 0)
        #expect(!FileManager.default.fileExists(atPath: daemon.socketPath))
    }
}
