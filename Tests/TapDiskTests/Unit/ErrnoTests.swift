import Glibc
import Testing

@testable import TapDisk

@Suite struct ErrnoTests {
    @Test func namesAndNoSpaceClass() throws {
        #expect(Errno(rawValue: ENOSPC).name == "ENOSPC")
        #expect(Errno(rawValue: EDQUOT).isNoSpace)
        #expect(!Errno(rawValue: EIO).isNoSpace)
        #expect(throws: Errno(rawValue: EINVAL)) { _ = try Errno.check(-EINVAL) }
        #expect(try Errno.check(5) == 5)
    }
}
