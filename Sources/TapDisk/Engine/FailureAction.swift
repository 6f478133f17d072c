/// What a failed READ/WRITE/DISCARD does (§6.2).
package enum FailureAction: String, Sendable, CaseIterable {
    case report
    case pause
}
