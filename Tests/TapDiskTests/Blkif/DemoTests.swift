import Foundation
import Glibc
import Testing

@testable import TapDisk

/// The README's first command runs `tapdiskd demo`; here it runs non-interactively and its JSON
/// verdict is checked field by field, not just its exit status.
@Suite(.serialized) struct DemoTests {
    /// A directory of links to the tools the ring runs need, and not QEMU: the demo on a machine
    /// without QEMU, which is what `scripts/demo.sh` must survive.
    private static func pathWithoutQEMU() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tapdisk-demo-path-\(getpid())").path
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for tool in ["mkfs.ext4", "losetup", "mount", "umount", "truncate", "rm", "debugfs", "e2fsck", "md5sum"] {
            if let path = Shell.which(tool) {
                try FileManager.default.createSymbolicLink(atPath: dir + "/" + tool, withDestinationPath: path)
            }
        }
        return dir
    }

    /// Runs `tapdiskd ARGUMENTS` (with `PATH` replaced when given), expects exit 0, and returns
    /// the JSON verdict it printed.
    private static func demoVerdict(
        _ arguments: [String], path: String? = nil, sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> JSONObject {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: DaemonProcess.binary)
        process.arguments = arguments
        if let path { process.environment = ProcessInfo.processInfo.environment.merging(["PATH": path]) { $1 } }
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.standardError
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, sourceLocation: sourceLocation)
        return try #require(try JSONParser.parse([UInt8](data)).objectValue, sourceLocation: sourceLocation)
    }

    @Test(.enabled(if: geteuid() == 0)) func demoVerdictHoldsEveryGuarantee() throws {
        let path = try Self.pathWithoutQEMU()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let verdict = try Self.demoVerdict(["demo", "--json"], path: path)
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
        // Without QEMU the VM act is skipped, says why, and does not fail the demo.
        #expect(verdict["vm"]?["skipped"]?.stringValue?.contains("qemu-system-x86_64") == true)
        // No mount or loop device is left behind.
        let mounts = ProcFile.read("/proc/mounts") ?? ""
        #expect(!mounts.contains("tapdiskd-demo-"))
    }

    /// The VM act: a Linux guest under QEMU writes until the host filesystem under its sparse disk
    /// is full. Its dd must fail with EIO, its kernel must log the I/O error, and every file it
    /// was told was written must be intact on the host, in an ext4 that e2fsck finds clean.
    @Test(
        .enabled(if: VhostUserGuest.available, "needs root, qemu-system-x86_64 and `scripts/guest.sh build`"),
        .timeLimit(.minutes(3)))
    func vmActGuestSeesEIOAndKeepsEveryAcknowledgedFile() throws {
        let verdict = try Self.demoVerdict(["demo", "--vm", "--json"])
        #expect(verdict["passed"]?.boolValue == true)
        #expect(verdict["runs"]?.objectValue?.isEmpty == true)
        let vm = try #require(verdict["vm"]?.objectValue)
        #expect(vm["guest-exit"]?.int64Value == 0)
        #expect(vm["guest-saw-eio"]?.boolValue == true, "\(vm["guest-error"] ?? .null)")
        #expect((vm["dmesg-io-errors"]?.int64Value ?? 0) >= 1)
        #expect((vm["files-acknowledged"]?.int64Value ?? 0) >= 1)
        #expect(vm["files-intact"] == vm["files-acknowledged"])
        #expect(vm["e2fsck-exit"]?.int64Value == 0)
        #expect(vm["first-io-error"]?["errno"]?.stringValue == "ENOSPC")
        #expect(vm["daemon-exit"]?.int64Value == 0)
        let mounts = ProcFile.read("/proc/mounts") ?? ""
        #expect(!mounts.contains("tapdiskd-demo-"))
    }

    @Test(.enabled(if: geteuid() == 0)) func vmOnlyWithoutQEMUSaysWhatItNeeds() throws {
        let path = try Self.pathWithoutQEMU()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try Shell.run([DaemonProcess.binary, "demo", "--vm"], environment: ["PATH": path])
        #expect(r.status == 1)
        #expect(r.stderr.split(separator: "\n").count == 1)
        #expect(r.stderr.contains("qemu-system-x86_64 is not installed"), "\(r.stderr)")
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
