import Foundation
import Glibc
import Testing

@testable import TapDisk

/// `tapdiskd create --preallocate full` shows its progress on a terminal and nothing elsewhere
/// (issue 17 §3): a toolstack reading stderr for errors must see only errors.
@Suite struct CreateProgressTests {
    @Test func notATerminalIsSilent() throws {
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let made = try Tapdiskd.run(["create", dir + "/full.img", "--size", "32M", "--preallocate", "full"])
        #expect(made.status == 0)
        #expect(made.stderr.isEmpty, "stderr was not a terminal, yet: \(made.stderr.debugDescription)")
        #expect(made.stdout.contains("created"))
    }

    /// Under a pseudo-terminal (`script -q -e -c`): the last progress line reports every byte,
    /// the rate and the time taken, and the result follows on its own line.
    @Test func aTerminalShowsBytesRateAndTimeLeft() throws {
        let dir = DaemonProcess.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = dir + "/full.img"
        let command = "\(DaemonProcess.binary) create \(image) --size 32M --preallocate full"
        let run = try Shell.run(["script", "-q", "-e", "-c", command, "/dev/null"], timeoutSeconds: 60)
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let text = run.stdout
        #expect(text.contains("preallocating: 32.0 MiB / 32.0 MiB (100%), "), "\(text.debugDescription)")
        #expect(text.contains("/s, done in "), "\(text.debugDescription)")
        #expect(text.contains(", syncing\u{1B}[K\r\n"), "the progress line ends before the result")
        #expect(text.contains("created \(image)"))
        var st = stat()
        #expect(stat(image, &st) == 0 && st.st_size == 32 << 20)
    }
}
