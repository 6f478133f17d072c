import TapDisk
import TapDiskMetrics

/// `tapdiskd top`'s two outputs: a fixed-width table for people and one JSON object per
/// sample for scripts.
enum TopRenderer {
    static let columns = [
        "DISK", "R-IOPS", "W-IOPS", "R-MB/s", "W-MB/s", "P99", "INFL", "HELD", "STATE", "IO", "FRONT", "LIMIT",
    ]

    /// The table, one line per row, columns padded to their widest cell (the disk name left
    /// aligned, numbers right aligned). Unknown values are `-`. LIMIT is the limits in force
    /// (`none` without), with a `*` after them while a limit holds a request back.
    static func table(_ rows: [TopRow]) -> String {
        var cells = [columns]
        for r in rows {
            cells.append([
                r.disk, rate(r.readIOPS, scale: 1), rate(r.writeIOPS, scale: 1),
                rate(r.readBytesPerSecond, scale: 1e6), rate(r.writeBytesPerSecond, scale: 1e6),
                latency(r.p99Nanos), r.inFlight.map(String.init) ?? "-", r.held.map(String.init) ?? "-", r.state,
                r.ioStatus ?? "-", r.front ?? "-", limitCell(r),
            ])
        }
        var widths = [Int](repeating: 0, count: columns.count)
        for line in cells { for (i, c) in line.enumerated() { widths[i] = max(widths[i], c.count) } }
        var text = ""
        for line in cells {
            var out: [String] = []
            for (i, c) in line.enumerated() {
                let pad = String(repeating: " ", count: widths[i] - c.count)
                let leftAligned = i == 0 || i >= 8
                out.append(leftAligned ? c + pad : pad + c)
            }
            var joined = out.joined(separator: "  ")
            while joined.last == " " { joined.removeLast() }
            text += joined + "\n"
        }
        return text
    }

    /// One sample as a JSON object: `interval-seconds` and `disks`, in the table's order.
    static func json(_ rows: [TopRow], intervalSeconds: Double) -> String {
        var disks: [JSONValue] = []
        for r in rows {
            var o: JSONObject = [:]
            o.set("disk", .string(r.disk))
            o.set("state", .string(r.state))
            o.set("io-status", r.ioStatus.map(JSONValue.string) ?? .null)
            o.set("front", r.front.map(JSONValue.string) ?? .null)
            o.set("in-flight", r.inFlight.map(JSONValue.uint) ?? .null)
            o.set("held", r.held.map(JSONValue.uint) ?? .null)
            o.set("read-iops", r.readIOPS.map(JSONValue.double) ?? .null)
            o.set("write-iops", r.writeIOPS.map(JSONValue.double) ?? .null)
            o.set("read-bytes-per-second", r.readBytesPerSecond.map(JSONValue.double) ?? .null)
            o.set("write-bytes-per-second", r.writeBytesPerSecond.map(JSONValue.double) ?? .null)
            // The bucket bound; a p99 above the last bound (10 s) is `"above-10s"`.
            o.set("p99-ns", r.p99Nanos.map { $0 == .max ? JSONValue.string("above-10s") : .uint($0) } ?? .null)
            o.set("limit", r.limit.map(JSONValue.string) ?? .null)
            o.set("throttled", r.throttled.map(JSONValue.bool) ?? .null)
            if let failure = r.failure { o.set("error", .string(failure)) }
            disks.append(.object(o))
        }
        let sample: JSONValue = ["interval-seconds": .double(intervalSeconds), "disks": .array(disks)]
        return JSONWriter.string(sample) + "\n"
    }

    /// The LIMIT cell: `-` when unknown, the limits, `*` appended while throttled.
    static func limitCell(_ r: TopRow) -> String {
        guard let limit = r.limit else { return "-" }
        return r.throttled == true ? limit + "*" : limit
    }

    /// A rate with one decimal below 100 and none above, `-` when unknown.
    static func rate(_ value: Double?, scale: Double) -> String {
        guard let value else { return "-" }
        let v = value / scale
        if v >= 100 { return String(Int(v.rounded())) }
        let tenths = Int((v * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }

    /// A bucket bound as `<=500us`, `<=2ms`, `<=1s`; `>10s` beyond the last; `-` when unknown.
    static func latency(_ nanos: UInt64?) -> String {
        guard let nanos else { return "-" }
        if nanos == .max { return ">10s" }
        if nanos >= 1_000_000_000 { return "<=\(nanos / 1_000_000_000)s" }
        if nanos >= 1_000_000 { return "<=\(nanos / 1_000_000)ms" }
        return "<=\(nanos / 1000)us"
    }
}
