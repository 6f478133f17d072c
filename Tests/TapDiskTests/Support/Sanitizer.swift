import Glibc
import Testing

/// Which sanitizer this test binary and the daemon it spawns were built with, if any.
///
/// `scripts/test.sh --sanitize KIND` compiles every module with `-DTAPDISK_SANITIZER` and exports
/// `TAPDISK_SANITIZER=KIND`. The compile-time condition is what decides (a test binary built without
/// a sanitizer never skips, whatever the environment says); the variable only names the kind.
///
/// Tests that cannot mean anything under a sanitizer skip themselves through `skipUnderSanitizer`,
/// so a sanitized run lists them as skipped with the reason instead of failing or dropping them:
/// - `AllocationTests`, `VhostUserAllocationTests`, `VhostUserEngineAllocationTests`: they count
///   malloc calls through a malloc the test binary defines; ASan and TSan bring their own malloc
///   (the counting one is not compiled in), and their runtimes allocate on the measured thread.
///
/// And one check inside a test: `AttachDetachCycleTests` does not bound the daemon's RSS (ASan keeps
/// freed blocks in a 256 MiB quarantine; LeakSanitizer checks that daemon at exit instead). Its fd
/// check stays.
enum Sanitizer {
    #if TAPDISK_SANITIZER
        static let active = true
    #else
        static let active = false
    #endif

    /// Why the malloc-counting suites skip.
    static let mallocReason: Comment =
        "counts malloc calls through the test binary's own malloc, which a sanitizer's malloc replaces"

    /// "address" or "thread" under `scripts/test.sh --sanitize`, nil otherwise.
    static var kind: String? {
        guard active else { return nil }
        return getenv("TAPDISK_SANITIZER").map { String(cString: $0) } ?? "unknown"
    }
}

extension Trait where Self == ConditionTrait {
    /// Skips a suite or test when the binary was built with a sanitizer, giving `reason`.
    static func skipUnderSanitizer(_ reason: Comment) -> Self {
        .disabled(if: Sanitizer.active, reason)
    }
}

#if TAPDISK_SANITIZER
    /// LeakSanitizer's hook: off for the test binary only. The daemons, the demo and every other
    /// `tapdiskd` the tests run are checked at exit. In this process LSan reported 1,098 blocks
    /// (236 KB) under `--sanitize address`, none allocated by TapDisk: Foundation's `Process`,
    /// `FileHandle` and `String(contentsOfFile:)` internals, Swift weak-reference side tables,
    /// and XCTest's own run objects. What the test code leaks does not reach a user; what the daemon leaks does.
    @_cdecl("__lsan_is_turned_off") func lsanIsTurnedOff() -> Int32 { 1 }
#endif
