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
