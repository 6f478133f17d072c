/// Why a disk is paused (§5.1). The first reason of a pause stays until the pause ends.
package enum PauseReason: String, Sendable {
    case operatorRequest = "operator"
    case nospace
    case ioError = "io-error"
}

/// The disk's state machine (§5.1).
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

/// QEMU-style summary of the last I/O failure (§5.1).
package enum IOStatus: String, Sendable {
    case ok
    case failed
    case nospace
}

/// What a failed READ/WRITE/DISCARD does (§5.2).
package enum FailureAction: String, Sendable, CaseIterable {
    case report
    case pause
}

/// The `--on-nospace`, `--on-error` and `--pause-timeout` policy.
package struct FailurePolicy: Sendable {
    package var onNospace: FailureAction
    package var onError: FailureAction
    /// Seconds a nospace/io-error pause may last before held requests are failed; 0 = forever.
    package var pauseTimeoutSeconds: UInt64

    package init(onNospace: FailureAction = .report, onError: FailureAction = .report, pauseTimeoutSeconds: UInt64 = 60)
    {
        self.onNospace = onNospace
        self.onError = onError
        self.pauseTimeoutSeconds = pauseTimeoutSeconds
    }

    package func action(for errno: Errno) -> FailureAction {
        errno.isNoSpace ? onNospace : onError
    }
}

/// What the engine tells the daemon (events, logs). Raised on state changes and failures only,
/// never per successful request.
package enum EngineEvent: Sendable, Equatable {
    case ioError(operation: String, errno: Errno, action: FailureAction, sector: UInt64)
    case stateChanged(DiskState)
    case frontendViolation(String)
}
