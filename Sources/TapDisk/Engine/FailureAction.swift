/// What a failed READ/WRITE/DISCARD does (§5.2).
package enum FailureAction: String, Sendable, CaseIterable {
    case report
    case pause
}
