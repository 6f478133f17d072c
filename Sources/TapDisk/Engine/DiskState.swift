/// The disk's state machine (§6.1).
package enum DiskState: Equatable, Sendable {
    case idle
    case running
    case paused(PauseReason)
    case halted
    case closing

    package var name: String {
        switch self {
        case .idle: "idle"
        case .running: "running"
        case .paused: "paused"
        case .halted: "halted"
        case .closing: "closing"
        }
    }

    /// `reason` as `status` and `state-changed` report it: null unless paused or halted.
    package var reason: String? {
        switch self {
        case .paused(let r): r.rawValue
        case .halted: "frontend-violation"
        default: nil
        }
    }

    package var isPaused: Bool {
        if case .paused = self { return true }
        return false
    }
}
