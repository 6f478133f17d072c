/// The §8 counters. Plain stored integers: the per-request path only increments fields.
///
/// Invariant at every moment: `consumed == responses + inFlight + held`.
package struct Counters: Sendable, Equatable {
    package var readRequests: UInt64 = 0
    package var writeRequests: UInt64 = 0
    package var flushRequests: UInt64 = 0
    package var barrierRequests: UInt64 = 0
    package var discardRequests: UInt64 = 0
    /// virtio GET_ID (the disk's serial, answered by the front without I/O).
    package var idRequests: UInt64 = 0
    package var readBytes: UInt64 = 0
    package var writeBytes: UInt64 = 0
    package var discardBytes: UInt64 = 0
    package var readErrors: UInt64 = 0
    package var writeErrors: UInt64 = 0
    package var flushErrors: UInt64 = 0
    package var discardErrors: UInt64 = 0
    package var nospaceErrors: UInt64 = 0
    package var invalidRequests: UInt64 = 0
    package var unsupportedRequests: UInt64 = 0
    package var shortCompletions: UInt64 = 0
    package var resubmittedRequests: UInt64 = 0
    package var responsesOkay: UInt64 = 0
    package var responsesError: UInt64 = 0
    package var responsesNotSupported: UInt64 = 0
    package var inFlight: UInt64 = 0
    package var held: UInt64 = 0
    /// Per-reason breakdown of `invalidRequests` and `unsupportedRequests`.
    package var rejections = RejectionCounts()
    /// Per-errno breakdown of the `*Errors` counters' failed attempts.
    package var errnoErrors = ErrnoCounts()

    package init() {}

    package var consumed: UInt64 {
        readRequests + writeRequests + flushRequests + barrierRequests + discardRequests + idRequests
            + invalidRequests + unsupportedRequests
    }

    package var responses: UInt64 { responsesOkay + responsesError + responsesNotSupported }

    package var invariantHolds: Bool { consumed == responses + inFlight + held }

    /// The counters under their protocol names, in §8 order.
    package var named: [(String, UInt64)] {
        [
            ("read-requests", readRequests), ("write-requests", writeRequests),
            ("flush-requests", flushRequests), ("barrier-requests", barrierRequests),
            ("discard-requests", discardRequests), ("read-bytes", readBytes), ("write-bytes", writeBytes),
            ("discard-bytes", discardBytes), ("read-errors", readErrors), ("write-errors", writeErrors),
            ("flush-errors", flushErrors), ("discard-errors", discardErrors), ("nospace-errors", nospaceErrors),
            ("invalid-requests", invalidRequests), ("unsupported-requests", unsupportedRequests),
            ("short-completions", shortCompletions), ("resubmitted-requests", resubmittedRequests),
            ("responses-okay", responsesOkay), ("responses-error", responsesError),
            ("responses-eopnotsupp", responsesNotSupported), ("in-flight", inFlight), ("held", held),
            ("id-requests", idRequests),
        ]
    }
}

/// How many requests each validation rule rejected.
package struct RejectionCounts: Sendable, Equatable {
    private var counts = [UInt64](repeating: 0, count: Rejection.allCases.count)

    package init() {}

    package subscript(_ r: Rejection) -> UInt64 {
        get { counts[r.index] }
        set { counts[r.index] = newValue }
    }
}
