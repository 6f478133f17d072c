import Foundation
import Glibc
import Testing

@testable import TapDisk

/// `TAPDISK_FAULTS`, the text that puts the fault seam into a debug daemon process.
@Suite struct FaultInjectorSpecificationTests {
    @Test func rulesAndRandomFaultsParse() throws {
        let f = try FaultInjector(specification: "sync:EIO,write:ENOSPC:*,read:short:3:2,any:28,random:7:eio=20:sync=5")
        #expect(f.completionRules.count == 4)
        #expect(f.completionRules[0].target == .sync && f.completionRules[0].fault == .errno(EIO))
        #expect(f.completionRules[1].count == Int.max && f.completionRules[1].fault == .errno(ENOSPC))
        #expect(
            f.completionRules[2].fault == .short && f.completionRules[2].count == 3 && f.completionRules[2].skip == 2)
        #expect(f.completionRules[3].target == .any && f.completionRules[3].fault == .errno(28))
        #expect(f.random?.seed == 7 && f.random?.eioPerMille == 20 && f.random?.syncFailPerMille == 5)
    }

    @Test(arguments: [
        "sync", "disk:EIO", "write:EFOO", "write:0", "write:EIO:0", "write:EIO:1:-1", "write:EIO:1:2:3",
        "random", "random:x", "random:1:eio", "random:1:eio=1001", "random:1:bogus=1",
    ])
    func malformedSpecificationsAreRefused(_ text: String) {
        #expect(throws: Errno.self) { try FaultInjector(specification: text) }
    }

    /// A debug daemon given a bad specification does not start (one line, exit 1, no socket).
    @Test func theDaemonRefusesABadSpecification() throws {
        let image = try DaemonTest.image(bytes: 1 << 20)
        defer { unlink(image) }
        let directory = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var environment = ProcessInfo.processInfo.environment
        environment["TAPDISK_FAULTS"] = "write:EFOO"
        let r = try Shell.run(
            [DaemonProcess.binary, "--image", image, "--socket", directory + "/s.sock"], environment: environment)
        #expect(r.status == 1)
        #expect(r.stderr.contains("TAPDISK_FAULTS=write:EFOO"))
        #expect(!FileManager.default.fileExists(atPath: directory + "/s.sock"))
    }
}
