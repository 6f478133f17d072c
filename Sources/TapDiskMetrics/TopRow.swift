import TapDisk

/// One disk's line in `tapdiskd top` (here rather than in the executable so tests can reach it): rates and p99 from two samples of the same daemon, one
/// interval apart, and the gauges of the newer one.
///
/// Rates are differences of the `stats` counters over the interval, and p99 is taken from the
/// difference of the latency buckets, so it describes this interval, not the daemon's lifetime.
package struct TopRow: Equatable, Sendable {
    package var disk: String
    /// `status`' state, or `down` when the daemon did not answer.
    package var state: String
    package var ioStatus: String?
    package var front: String?
    package var inFlight: UInt64?
    package var held: UInt64?
    /// Per second over the interval; nil without an earlier sample of this disk.
    package var readIOPS: Double?
    package var writeIOPS: Double?
    package var readBytesPerSecond: Double?
    package var writeBytesPerSecond: Double?
    /// The upper bound (ns) of the bucket holding the interval's p99 over all operations,
    /// `UInt64.max` when it lies beyond the last bound (10 s); nil when nothing completed in the
    /// interval or the histograms are missing.
    package var p99Nanos: UInt64?
    /// The QoS limits in force, as `status` reports them (`iops-total=200,bps-write=10M`), `none`
    /// without; nil when the daemon does not report limits.
    package var limit: String?
    /// A limit holds a waiting request back now.
    package var throttled: Bool?
    /// Why the daemon is `down`.
    package var failure: String?

    /// Read plus write IOPS, the sort key (0 for a disk without rates).
    package var totalIOPS: Double { (readIOPS ?? 0) + (writeIOPS ?? 0) }

    /// The rows for `current`, using `previous` (matched by socket path) for the rates. When both
    /// samples carry `uptime-seconds` their difference is the interval (the daemon's own clock
    /// between its two answers); otherwise `seconds`, the time between the two scrapes.
    package static func rows(previous: [DaemonSample], current: [DaemonSample], seconds: Double) -> [TopRow] {
        var before: [String: DaemonSample.Replies] = [:]
        for s in previous { if let r = s.replies { before[s.socketPath] = r } }
        return sorted(current.map { row(before[$0.socketPath], $0, seconds: seconds) })
    }

    /// By total IOPS, highest first, then by disk name.
    package static func sorted(_ rows: [TopRow]) -> [TopRow] {
        rows.sorted { a, b in
            a.totalIOPS != b.totalIOPS ? a.totalIOPS > b.totalIOPS : a.disk < b.disk
        }
    }

    package static func row(_ before: DaemonSample.Replies?, _ sample: DaemonSample, seconds: Double) -> TopRow {
        guard let now = sample.replies else {
            return TopRow(disk: sample.disk, state: "down", failure: sample.failure)
        }
        let status = now.status
        var row = TopRow(
            disk: sample.disk, state: status["state"]?.stringValue ?? "-",
            ioStatus: status["io-status"]?.stringValue, front: status["front"]?.stringValue,
            inFlight: status["in-flight"]?.uint64Value, held: status["held"]?.uint64Value)
        row.limit = status["limits"]?.objectValue.map(limitText)
        row.throttled = status["throttled"]?.boolValue
        guard let before else { return row }
        var interval = seconds
        if let t0 = before.status["uptime-seconds"]?.doubleValue, let t1 = status["uptime-seconds"]?.doubleValue,
            t1 > t0
        {
            interval = t1 - t0
        }
        guard interval > 0 else { return row }
        let c0 = before.stats["counters"]?.objectValue ?? [:]
        let c1 = now.stats["counters"]?.objectValue ?? [:]
        func rate(_ key: String) -> Double? {
            guard let v1 = c1[key]?.uint64Value else { return nil }
            return Double(delta(c0[key]?.uint64Value ?? 0, v1)) / interval
        }
        row.readIOPS = rate("read-requests")
        row.writeIOPS = rate("write-requests")
        row.readBytesPerSecond = rate("read-bytes")
        row.writeBytesPerSecond = rate("write-bytes")
        row.p99Nanos = p99(before.stats["latency"]?.objectValue, now.stats["latency"]?.objectValue)
        return row
    }

    /// `status`' `limits` as `KEY=VALUE` pairs, bytes in whole K/M/G where they divide; `none`.
    package static func limitText(_ limits: JSONObject) -> String {
        var parts: [String] = []
        for member in limits {
            guard let v = member.value.uint64Value else { continue }
            var value = String(v)
            if member.key.hasPrefix("bps-") && !member.key.hasSuffix("-length") {
                for (suffix, unit) in [("G", UInt64(1) << 30), ("M", 1 << 20), ("K", 1 << 10)]
                where v >= unit && v % unit == 0 {
                    value = "\(v / unit)\(suffix)"
                    break
                }
            }
            parts.append("\(member.key)=\(value)")
        }
        return parts.isEmpty ? "none" : parts.joined(separator: ",")
    }

    /// A counter's growth; a counter that went down belongs to a restarted daemon, whose whole
    /// count is new.
    package static func delta(_ old: UInt64, _ new: UInt64) -> UInt64 { new >= old ? new - old : new }

    /// p99 of the requests that completed between two `latency` objects, all operations merged:
    /// the bound of its bucket, `UInt64.max` above the last bound, nil when none completed.
    package static func p99(_ old: JSONObject?, _ new: JSONObject?) -> UInt64? {
        guard let new, let bounds = new["bounds-ns"]?.arrayValue?.compactMap({ $0.uint64Value }), !bounds.isEmpty
        else { return nil }
        var merged = [UInt64](repeating: 0, count: bounds.count + 1)
        for member in new where member.key != "bounds-ns" {
            guard let b1 = buckets(member.value, count: merged.count) else { continue }
            let b0 = old?[member.key].flatMap { buckets($0, count: merged.count) } ?? []
            let restarted = zip(b0, b1).contains { $0 > $1 }
            for i in 0..<merged.count {
                merged[i] += restarted || b0.isEmpty ? b1[i] : b1[i] - b0[i]
            }
        }
        let total = merged.reduce(0, +)
        guard total > 0 else { return nil }
        let rank = max(1, UInt64((Double(total) * 0.99).rounded(.up)))
        var seen: UInt64 = 0
        for (i, c) in merged.enumerated() {
            seen += c
            if seen >= rank { return i < bounds.count ? bounds[i] : .max }
        }
        return .max
    }

    private static func buckets(_ value: JSONValue, count: Int) -> [UInt64]? {
        guard let b = value.objectValue?["buckets"]?.arrayValue?.compactMap({ $0.uint64Value }), b.count == count
        else { return nil }
        return b
    }
}
