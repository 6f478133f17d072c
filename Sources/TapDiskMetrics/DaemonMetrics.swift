import TapDisk

/// The metric set (docs/operations.md, "Metrics"): daemons' `info`, `status` and `stats`
/// replies as metric families with the labels `disk`, `front` and, where it applies, `op`.
///
/// Only what a daemon reports is exported: a field missing from a reply (for example the
/// `latency` histograms of a daemon older than them, or image-space figures the filesystem did
/// not give) leaves its series out rather than inventing a zero.
package enum DaemonMetrics {
    package static let prefix = "tapdiskd_"

    /// The families for one scrape, every disk in each, in a fixed order.
    package static func families(_ samples: [DaemonSample]) -> [MetricFamily] {
        var builder = Builder()
        for sample in samples { builder.add(sample) }
        return builder.families
    }

    private struct Builder {
        var families: [MetricFamily] = []
        var index: [String: Int] = [:]

        mutating func add(
            _ name: String, _ kind: MetricFamily.Kind, _ help: String, _ labels: [MetricFamily.Label],
            _ value: MetricFamily.Value
        ) {
            let full = DaemonMetrics.prefix + name
            let i =
                index[full]
                ?? {
                    families.append(MetricFamily(name: full, help: help, kind: kind))
                    index[full] = families.count - 1
                    return families.count - 1
                }()
            families[i].samples.append(.init(labels: labels, value: value))
        }

        mutating func add(_ sample: DaemonSample) {
            let disk = MetricFamily.Label("disk", sample.disk)
            add(
                "up", .gauge, "1 if the daemon answered info, status and stats within the deadline.", [disk],
                .integer(sample.replies == nil ? 0 : 1))
            add(
                "query_duration_seconds", .gauge, "How long the exporter's query of this daemon took.", [disk],
                .double(sample.seconds))
            guard let replies = sample.replies else { return }
            let status = replies.status
            let counters = replies.stats["counters"]?.objectValue ?? [:]
            let base = [disk, .init("front", status["front"]?.stringValue ?? "none")]

            func counter(_ name: String, _ help: String, _ key: String, extra: [MetricFamily.Label] = []) {
                guard let v = counters[key]?.uint64Value else { return }
                add(name, .counter, help, base + extra, .integer(v))
            }
            for op in ["read", "write", "flush", "barrier", "discard", "id"] {
                counter(
                    "requests", "Requests consumed from the front, by operation.", "\(op)-requests",
                    extra: [.init("op", op)])
            }
            for op in ["read", "write", "discard"] {
                counter("bytes", "Bytes of requests consumed, by operation.", "\(op)-bytes", extra: [.init("op", op)])
            }
            for op in ["read", "write", "flush", "discard"] {
                counter(
                    "errors", "Requests answered with an I/O error, by operation.", "\(op)-errors",
                    extra: [.init("op", op)])
            }
            counter(
                "nospace_errors", "I/O errors that were ENOSPC or EDQUOT (also counted in errors).", "nospace-errors")
            for member in counters["errors-by-errno"]?.objectValue ?? [:] {
                guard let v = member.value.uint64Value else { continue }
                add(
                    "errors_by_errno", .counter, "Failed I/O attempts by errno (the same attempts as errors).",
                    base + [.init("errno", member.key)], .integer(v))
            }
            for (status, key) in [
                ("okay", "responses-okay"), ("error", "responses-error"),
                ("eopnotsupp", "responses-eopnotsupp"),
            ] {
                counter(
                    "responses", "Responses written to the front, by status.", key, extra: [.init("status", status)])
            }
            if let rejections = counters["rejections"]?.objectValue {
                for member in rejections {
                    guard let v = member.value.uint64Value else { continue }
                    add(
                        "rejected_requests", .counter, "Requests refused by validation, by rule.",
                        base + [.init("reason", member.key)], .integer(v))
                }
            }
            counter("short_completions", "AIO completions shorter than asked, resubmitted.", "short-completions")
            counter(
                "resubmitted_requests", "Requests resubmitted after a short completion or resume.",
                "resubmitted-requests")
            counter("poll_hits", "Busy-poll rounds that found work.", "poll-hits")
            counter("poll_misses", "Busy-poll rounds that found none.", "poll-misses")
            if let us = counters["poll-microseconds"]?.uint64Value {
                add("poll_seconds", .counter, "Time spent busy-polling.", base, .double(Double(us) / 1e6))
            }
            for member in counters["paused-seconds"]?.objectValue ?? [:] {
                guard let v = member.value.doubleValue else { continue }
                add(
                    "paused_seconds", .counter, "Time spent paused, by reason.", base + [.init("reason", member.key)],
                    .double(v))
            }
            if let v = counters["throttled-seconds"]?.doubleValue {
                add(
                    "throttled_seconds", .counter, "Time requests waited for a QoS limit before being consumed.", base,
                    .double(v))
            }
            counter(
                "throttle_delayed_requests", "Times a waiting request was held back by a QoS limit.",
                "throttle-delayed-requests")
            counter(
                "control_connections_refused", "Control connections refused (over the limit or out of fds).",
                "control-connections-refused")
            counter(
                "fd_exhaustion_episodes", "Times the daemon ran out of file descriptors.",
                "fd-exhaustion-episodes")

            if let v = status["in-flight"]?.uint64Value {
                add("in_flight_requests", .gauge, "Requests submitted and not yet answered.", base, .integer(v))
            }
            if let v = status["held"]?.uint64Value {
                add("held_requests", .gauge, "Requests held while paused, to be retried on resume.", base, .integer(v))
            }
            if let state = status["state"]?.stringValue {
                for s in ["idle", "running", "paused", "halted", "closing"] {
                    add(
                        "state", .gauge, "1 for the daemon's current state.", base + [.init("state", s)],
                        .integer(s == state ? 1 : 0))
                }
                let reason = state == "paused" ? status["reason"]?.stringValue : nil
                for r in ["operator", "nospace", "io-error"] {
                    add(
                        "paused", .gauge, "1 if paused for this reason.", base + [.init("reason", r)],
                        .integer(r == reason ? 1 : 0))
                }
            }
            if let io = status["io-status"]?.stringValue {
                for s in ["ok", "failed", "nospace"] {
                    add(
                        "io_status", .gauge, "1 for the disk's current io-status.", base + [.init("status", s)],
                        .integer(s == io ? 1 : 0))
                }
            }
            if let attached = status["attached"]?.boolValue {
                add(
                    "frontend_connected", .gauge, "Frontends attached (0 or 1), by front.", base,
                    .integer(attached ? 1 : 0))
            }
            if let throttled = status["throttled"]?.boolValue {
                add(
                    "throttled", .gauge, "1 while a QoS limit holds a waiting request back.", base,
                    .integer(throttled ? 1 : 0))
            }
            if let limits = status["limits"]?.objectValue {
                for op in ["total", "read", "write"] {
                    if let v = limits["iops-\(op)"]?.uint64Value {
                        add(
                            "limit_iops", .gauge, "The QoS limit in requests per second (set-limits, --limit).",
                            base + [.init("op", op)], .integer(v))
                    }
                    if let v = limits["bps-\(op)"]?.uint64Value {
                        add(
                            "limit_bytes_per_second", .gauge,
                            "The QoS limit in bytes per second (set-limits, --limit).",
                            base + [.init("op", op)], .integer(v))
                    }
                }
            }
            if let uptime = status["uptime-seconds"]?.doubleValue {
                add("uptime_seconds", .gauge, "Seconds since the daemon started.", base, .double(uptime))
            }
            let space = status["image-space"]?.objectValue ?? [:]
            for (name, key, help) in [
                ("image_apparent_bytes", "apparent-bytes", "The image's apparent size."),
                ("image_allocated_bytes", "allocated-bytes", "Bytes the image occupies on its filesystem."),
                ("filesystem_free_bytes", "fs-free-bytes", "Free bytes on the image's filesystem."),
                ("image_overcommit_bytes", "overcommit-bytes", "Unallocated image bytes beyond the free space."),
            ] {
                if let v = space[key]?.uint64Value { add(name, .gauge, help, base, .integer(v)) }
            }
            if let latency = replies.stats["latency"]?.objectValue { addLatency(latency, base) }
            var build = [disk]
            if let p = replies.info["protocol"]?.int64Value { build.append(.init("protocol", String(p))) }
            add("build_info", .gauge, "Always 1; labels describe the daemon.", build, .integer(1))
        }

        /// `stats`' `latency` (docs/protocol.md): `bounds-ns`, then per operation `buckets`
        /// (per bucket, not cumulative, one past the last bound) and `sum-ns`.
        mutating func addLatency(_ latency: JSONObject, _ base: [MetricFamily.Label]) {
            guard let bounds = latency["bounds-ns"]?.arrayValue?.compactMap({ $0.uint64Value }), !bounds.isEmpty
            else { return }
            for member in latency where member.key != "bounds-ns" {
                guard let op = member.value.objectValue,
                    let buckets = op["buckets"]?.arrayValue?.compactMap({ $0.uint64Value }),
                    buckets.count == bounds.count + 1
                else { continue }
                var cumulative: [UInt64] = []
                var running: UInt64 = 0
                for b in buckets.prefix(bounds.count) {
                    running &+= b
                    cumulative.append(running)
                }
                let h = MetricFamily.Histogram(
                    bounds: bounds.map { Double($0) / 1e9 }, cumulative: cumulative,
                    count: running &+ buckets[bounds.count],
                    sum: Double(op["sum-ns"]?.uint64Value ?? 0) / 1e9)
                add(
                    "request_duration_seconds", .histogram,
                    "From consuming a request to writing its answer, by operation.", base + [.init("op", member.key)],
                    .histogram(h))
            }
        }
    }
}
