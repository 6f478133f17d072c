/// Everything the command line decides about one daemon (PROTOCOL.md §1, §5).
package struct DaemonConfiguration: Sendable {
    package var imagePath: String
    /// nil only under socket activation.
    package var socketPath: String?
    package var readOnly = false
    package var cache: CacheMode = .none
    package var policy = FailurePolicy()
    package var maxRingPageOrder = 4
    package var lowSpaceThreshold: LowSpaceThreshold? = nil

    package init(imagePath: String, socketPath: String?) {
        self.imagePath = imagePath
        self.socketPath = socketPath
    }
}
