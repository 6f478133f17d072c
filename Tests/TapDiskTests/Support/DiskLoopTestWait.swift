@testable import TapDisk

/// Polls a condition that the test itself advances (each call steps the loop once).
enum DiskLoopTestWait {
    static func until(seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while MonotonicClock.nanoseconds() < deadline {
            if condition() { return true }
        }
        return false
    }
}
