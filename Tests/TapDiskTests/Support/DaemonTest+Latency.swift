import Testing

@testable import TapDisk

extension DaemonTest {
    /// `stats`' `latency` object (docs/protocol.md §2.2), with its shape required: the 22 bounds,
    /// and for each of the five operations 23 integer buckets whose sum is its `count`.
    /// Returns each operation's histogram and the counters of the same reply.
    static func latency(_ client: ControlClient, sourceLocation: SourceLocation = #_sourceLocation) throws -> (
        histograms: [String: LatencySnapshot], counters: JSONObject
    ) {
        let reply = try client.call("stats")
        let counters = try #require(reply["counters"]?.objectValue, sourceLocation: sourceLocation)
        let latency = try #require(reply["latency"]?.objectValue, "no latency object", sourceLocation: sourceLocation)
        let bounds = try #require(latency["bounds-ns"]?.arrayValue, sourceLocation: sourceLocation)
        #expect(bounds.compactMap(\.uint64Value) == LatencyHistograms.boundsNanos, sourceLocation: sourceLocation)
        var histograms: [String: LatencySnapshot] = [:]
        for name in ["read", "write", "flush", "barrier", "discard"] {
            let h = try #require(latency[name]?.objectValue, "no \(name) histogram", sourceLocation: sourceLocation)
            let buckets = try #require(h["buckets"]?.arrayValue, sourceLocation: sourceLocation).compactMap(
                \.uint64Value)
            let sum = try #require(h["sum-ns"]?.uint64Value, sourceLocation: sourceLocation)
            let count = try #require(h["count"]?.uint64Value, sourceLocation: sourceLocation)
            #expect(buckets.count == LatencyHistograms.bucketCount, "\(name)", sourceLocation: sourceLocation)
            let snapshot = LatencySnapshot(buckets: buckets, sumNanos: sum)
            #expect(snapshot.count == count, "\(name): buckets add up to count", sourceLocation: sourceLocation)
            histograms[name] = snapshot
        }
        #expect(latency.count == 6, "exactly bounds-ns and five operations", sourceLocation: sourceLocation)
        return (histograms, counters)
    }
}
