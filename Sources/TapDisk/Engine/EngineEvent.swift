/// What the engine tells the daemon (events, logs). Raised on state changes and failures only,
/// never per successful request.
package enum EngineEvent: Sendable, Equatable {
    case ioError(operation: String, errno: Errno, action: FailureAction, sector: UInt64)
    case stateChanged(DiskState)
    case frontendViolation(String)
}
