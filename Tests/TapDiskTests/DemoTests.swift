import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The README's first command runs `tapdiskd demo`; here it runs non-interactively and its JSON
/// verdict is checked field by field, not just its exit status.
@Suite(.serialized) struct DemoTests {
    @Test(.enabled(if: geteuid() == 0)) func demoVerdictHoldsEveryGuarantee() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: DaemonProcess.binary)
        process.arguments = ["demo", "--json"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.standardError
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let verdict = try #require(try JSONParser.parse([UInt8](data)).objectValue)
        #expect(verdict["passed"]?.boolValue == true)
        let report = try #require(verdict["runs"]?["report"]?.objectValue)
        let pause = try #require(verdict["runs"]?["pause"]?.objectValue)
        for run in [report, pause] {
            #expect(run["missing"]?.int64Value == 0)
            #expect(run["duplicates"]?.int64Value == 0)
            #expect(run["acknowledged-lost"]?.int64Value == 0)
            #expect(run["acknowledged-intact"] == run["okay"])
            #expect(run["daemon-exit"]?.int64Value == 0)
            let c = try #require(run["counters"]?.objectValue)
            #expect(c["in-flight"]?.int64Value == 0 && c["held"]?.int64Value == 0)
            #expect(c["responses-okay"] == run["okay"])
        }
        #expect((report["error"]?.int64Value ?? 0) >= 1)
        #expect(report["first-io-error"]?["errno"]?.stringValue == "ENOSPC")
        #expect(report["status"]?["io-status"]?.stringValue == "nospace")
        #expect((pause["held-then-completed"]?.int64Value ?? 0) >= 1)
        #expect(pause["error"]?.int64Value == 0)
        #expect(pause["paused-reason"]?.stringValue == "nospace")
        #expect(pause["resumed-automatically"]?.boolValue == true)
        // No mount or loop device is left behind.
        let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        #expect(!mounts.contains("tapdiskd-demo-"))
    }

    @Test(.enabled(if: geteuid() == 0)) func demoWithoutRootSaysWhatItNeeds() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", DaemonProcess.binary, "demo"]
        let err = Pipe()
        process.standardError = err
        process.standardOutput = Pipe()
        try process.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus != 0)
        #expect(text.split(separator: "\n").count == 1)
        #expect(text.contains("needs root"))
    }
}
