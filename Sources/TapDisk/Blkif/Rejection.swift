/// Why a request was answered without any I/O (docs/protocol.md §5.1), in check order.
package enum Rejection: String, Sendable, CaseIterable {
    // EOPNOTSUPP
    case unsupportedOperation = "unsupported-operation"
    case secureDiscard = "secure-discard"
    // ERROR, counted in invalid-requests
    /// INDIRECT whose `indirect_op` is not READ or WRITE.
    case badIndirectOperation = "bad-indirect-operation"
    case badSegmentCount = "bad-segment-count"
    /// INDIRECT naming an indirect page `>= data-pages`.
    case indirectGrefOutOfRange = "indirect-gref-out-of-range"
    case firstAfterLast = "first-sect-after-last-sect"
    case lastSectorBeyondPage = "last-sect-beyond-page"
    case grefOutOfRange = "gref-out-of-range"
    case misalignedSegment = "misaligned-segment"
    case misalignedRange = "misaligned-range"
    case readOnly = "read-only"
    case rangeWraps = "range-wraps"
    case rangeBeyondEnd = "range-beyond-end"

    package var status: BlkifStatus {
        switch self {
        case .unsupportedOperation, .secureDiscard: .notSupported
        default: .error
        }
    }

    var index: Int { Self.allCases.firstIndex(of: self)! }
}
