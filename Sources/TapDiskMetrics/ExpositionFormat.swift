/// The two text formats a scraper may ask for, chosen from its `Accept` header.
package enum ExpositionFormat: Sendable, Equatable {
    /// Prometheus text format 0.0.4: what `promtool check metrics` reads and any scraper accepts.
    case prometheus
    /// OpenMetrics 1.0.0: counters' families without `_total`, and `# EOF` at the end.
    case openMetrics

    /// OpenMetrics only when asked for by name (Prometheus itself asks for it first); anything
    /// else, including no header, gets the Prometheus text format.
    package init(accept: String?) {
        let offered = (accept ?? "").split(separator: ",").map { part in
            part.split(separator: ";").first.map { $0.trimmingSpaces.lowercased() } ?? ""
        }
        self = offered.contains("application/openmetrics-text") ? .openMetrics : .prometheus
    }

    package var contentType: String {
        switch self {
        case .prometheus: "text/plain; version=0.0.4; charset=utf-8"
        case .openMetrics: "application/openmetrics-text; version=1.0.0; charset=utf-8"
        }
    }

    /// The families in this format, in the given order.
    package func render(_ families: [MetricFamily]) -> String {
        var out = ""
        out.reserveCapacity(families.reduce(0) { $0 + 200 + $1.samples.count * 96 })
        for family in families where !family.samples.isEmpty {
            let familyName =
                family.kind == .counter && self == .prometheus ? family.name + "_total" : family.name
            out += "# HELP \(familyName) \(Self.escapeHelp(family.help))\n"
            out += "# TYPE \(familyName) \(family.kind.rawValue)\n"
            for sample in family.samples {
                switch sample.value {
                case .integer(let v):
                    line(&out, family.kind == .counter ? family.name + "_total" : family.name, sample.labels, String(v))
                case .double(let v):
                    line(
                        &out, family.kind == .counter ? family.name + "_total" : family.name, sample.labels,
                        Self.format(v))
                case .histogram(let h):
                    for (bound, count) in zip(h.bounds, h.cumulative) {
                        line(
                            &out, family.name + "_bucket", sample.labels + [.init("le", Self.format(bound))],
                            String(count))
                    }
                    line(&out, family.name + "_bucket", sample.labels + [.init("le", "+Inf")], String(h.count))
                    line(&out, family.name + "_sum", sample.labels, Self.format(h.sum))
                    line(&out, family.name + "_count", sample.labels, String(h.count))
                }
            }
        }
        if self == .openMetrics { out += "# EOF\n" }
        return out
    }

    private func line(_ out: inout String, _ name: String, _ labels: [MetricFamily.Label], _ value: String) {
        out += name
        if !labels.isEmpty {
            out += "{"
            for (i, label) in labels.enumerated() {
                if i > 0 { out += "," }
                out += label.name + "=\"" + Self.escapeLabel(label.value) + "\""
            }
            out += "}"
        }
        out += " " + value + "\n"
    }

    /// A number both formats parse: integers without a fraction, `+Inf`/`-Inf`/`NaN` spelled out.
    package static func format(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return "\(v)"
    }

    static func escapeLabel(_ s: String) -> String {
        guard s.contains(where: { $0 == "\\" || $0 == "\"" || $0 == "\n" }) else { return s }
        var out = ""
        for c in s {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }

    static func escapeHelp(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var s = self
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return s
    }
}
