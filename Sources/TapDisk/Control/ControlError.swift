/// A failed control request: the code a client switches on and a message for its operator.
///
/// Messages are written by the daemon and should not quote client input; if one does, the
/// reply writer escapes it and bounds its length (see `ControlReply`).
package struct ControlError: Error, Equatable, Sendable, CustomStringConvertible {
    package var code: ControlErrorCode
    package var message: String

    package init(_ code: ControlErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    package static func badRequest(_ message: String) -> ControlError {
        ControlError(.badRequest, message)
    }
    package static func unknownCommand(_ message: String) -> ControlError {
        ControlError(.unknownCommand, message)
    }
    package static func invalidArgument(_ message: String) -> ControlError {
        ControlError(.invalidArgument, message)
    }
    package static func busy(_ message: String) -> ControlError { ControlError(.busy, message) }
    package static func notAttached(_ message: String) -> ControlError {
        ControlError(.notAttached, message)
    }
    package static func wrongState(_ message: String) -> ControlError {
        ControlError(.wrongState, message)
    }
    package static func ioError(_ message: String) -> ControlError { ControlError(.ioError, message) }
    package static func internalError(_ message: String) -> ControlError {
        ControlError(.internalError, message)
    }

    package var description: String { "\(code.rawValue): \(message)" }
}
