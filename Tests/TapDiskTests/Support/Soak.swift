import Glibc
import Testing

/// One iteration of `scripts/soak.sh`: the seed it runs, from `TAPDISK_SOAK_SEED`.
///
/// The soak tests (`DaemonPropertyTests.soakIteration`, `VhostUserDaemonPropertyTests.soakIteration`)
/// are the suites' randomized daemon-process runs with the seed, the policy, the polling and (for
/// vhost-user) the queue shape all drawn from this one number, so `scripts/soak.sh 1 --seed S`
/// replays a failed iteration. In the normal suite the variable is unset and they skip.
enum Soak {
    static let seed: UInt64? = getenv("TAPDISK_SOAK_SEED").flatMap { UInt64(String(cString: $0)) }

    static let enabled: ConditionTrait = .enabled(
        if: seed != nil, "runs only under scripts/soak.sh (TAPDISK_SOAK_SEED)")

    /// FNV-1a over `bytes`, continuing from `hash`: the digest soak prints for the first batch a
    /// stream sends, which depends only on the seed (later batches depend on when answers come).
    static func digest(_ hash: UInt64, _ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h = hash
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }
    static let digestBasis: UInt64 = 0xcbf2_9ce4_8422_2325
}
