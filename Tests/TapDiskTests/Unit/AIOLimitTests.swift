import Glibc
import Testing

@testable import TapDisk

/// The start-up message when `io_setup` finds the host's AIO limit used up: it names the limit,
/// both numbers and what to do. (A real EAGAIN needs `fs.aio-max-nr` lowered for the whole host,
/// which the other suites running at the same time would feel; scripts/many-disks.sh meets it.)
@Suite struct AIOLimitTests {
    @Test func eagainNamesTheHostLimitAndTheWayOut() {
        let text = AIOLimit.setupFailure(
            Errno(rawValue: EAGAIN), events: 512, limit: AIOLimit(inUse: 65_536, maximum: 65_536))
        #expect(text.hasPrefix("cannot set up Linux AIO for 512 requests: EAGAIN"), "\(text)")
        #expect(text.contains("fs.aio-nr 65536 of fs.aio-max-nr 65536"), "\(text)")
        #expect(text.contains("sysctl -w fs.aio-max-nr=131072"), "\(text)")
        #expect(text.contains("--max-ring-page-order"), "\(text)")
    }

    @Test func otherErrorsAndAnUnknownLimitSayOnlyTheError() {
        let limit = AIOLimit(inUse: 0, maximum: 65_536)
        let enomem = AIOLimit.setupFailure(Errno(rawValue: ENOMEM), events: 32, limit: limit)
        #expect(enomem == "cannot set up Linux AIO for 32 requests: \(Errno(rawValue: ENOMEM))")
        let unknown = AIOLimit.setupFailure(Errno(rawValue: EAGAIN), events: 32, limit: nil)
        #expect(!unknown.contains("fs.aio-max-nr"))
    }

    @Test func theHostsValuesAreRead() throws {
        let limit = try #require(AIOLimit.current(), "/proc/sys/fs/aio-nr and aio-max-nr")
        #expect(limit.maximum > 0)
    }
}
