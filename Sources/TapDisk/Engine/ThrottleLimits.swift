/// A disk's I/O limits, in QEMU's names and with QEMU's rules (`-drive throttling.*`,
/// `block_set_io_throttle`, util/throttle.c), so an operator who knows one knows the other:
/// `iops-total`, `iops-read`, `iops-write` (requests per second), `bps-total`, `bps-read`,
/// `bps-write` (bytes per second), each with an optional burst `*-max` (the rate allowed while
/// the burst lasts) and `*-max-length` (how many seconds of `*-max` a burst may last, default 1).
///
/// A plain value type with no storage on the heap: the engine keeps it next to its buckets.
package struct ThrottleLimits: Equatable, Sendable {
    /// The six limited quantities, in QEMU's order.
    package enum Kind: Int, CaseIterable, Sendable {
        case iopsTotal, iopsRead, iopsWrite, bpsTotal, bpsRead, bpsWrite

        package var name: String {
            switch self {
            case .iopsTotal: "iops-total"
            case .iopsRead: "iops-read"
            case .iopsWrite: "iops-write"
            case .bpsTotal: "bps-total"
            case .bpsRead: "bps-read"
            case .bpsWrite: "bps-write"
            }
        }

        /// Bytes (a `K`/`M`/`G`/`T` suffix is accepted on the command line) rather than requests.
        package var countsBytes: Bool { rawValue >= Kind.bpsTotal.rawValue }
    }

    /// One quantity's limit; all zero is "no limit".
    package struct Limit: Equatable, Sendable {
        /// Units per second in the long run; 0: not limited.
        package var average: UInt64 = 0
        /// `*-max`: units per second while a burst lasts; 0: bursts of a tenth of a second only.
        package var burst: UInt64 = 0
        /// `*-max-length`: seconds a burst at `burst` may last.
        package var burstSeconds: UInt64 = 1

        package init(average: UInt64 = 0, burst: UInt64 = 0, burstSeconds: UInt64 = 1) {
            self.average = average
            self.burst = burst
            self.burstSeconds = burstSeconds
        }
    }

    /// Why limits were refused; the message names the option as the operator wrote it.
    package struct ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        package var message: String
        package init(_ message: String) { self.message = message }
        package var description: String { message }
    }

    /// QEMU's `THROTTLE_VALUE_MAX`: larger values are refused rather than overflowing a bucket.
    package static let maxValue: UInt64 = 1_000_000_000_000_000

    private var iopsTotal = Limit()
    private var iopsRead = Limit()
    private var iopsWrite = Limit()
    private var bpsTotal = Limit()
    private var bpsRead = Limit()
    private var bpsWrite = Limit()

    /// No limits.
    package init() {}

    package subscript(kind: Kind) -> Limit {
        get {
            switch kind {
            case .iopsTotal: iopsTotal
            case .iopsRead: iopsRead
            case .iopsWrite: iopsWrite
            case .bpsTotal: bpsTotal
            case .bpsRead: bpsRead
            case .bpsWrite: bpsWrite
            }
        }
        set {
            switch kind {
            case .iopsTotal: iopsTotal = newValue
            case .iopsRead: iopsRead = newValue
            case .iopsWrite: iopsWrite = newValue
            case .bpsTotal: bpsTotal = newValue
            case .bpsRead: bpsRead = newValue
            case .bpsWrite: bpsWrite = newValue
            }
        }
    }

    /// At least one quantity is limited.
    package var isLimited: Bool { Kind.allCases.contains { self[$0].average > 0 } }

    // MARK: - Text: `--limit` and `ctl set-limits`

    /// Parses `iops-total=200,bps-write=10M,iops-total-max=400,iops-total-max-length=5`; `none`
    /// (or an empty string) is no limit. Keys are QEMU's; a key given twice, an unknown key, a
    /// value that is not a decimal integer (bytes may carry `K`/`M`/`G`/`T`, powers of 1024) and
    /// every combination QEMU refuses are errors.
    package static func parse(_ text: String) throws(ParseError) -> ThrottleLimits {
        var pairs: [(String, UInt64)] = []
        guard !text.isEmpty, text != "none" else { return ThrottleLimits() }
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty else {
                throw ParseError("'\(item)': expected KEY=VALUE, such as iops-total=200")
            }
            let key = String(parts[0])
            let value = String(parts[1])
            let bytes = key.hasPrefix("bps-") && !key.hasSuffix("-length")
            let number: UInt64
            if bytes {
                do { number = try ByteSize.parse(value) } catch { throw ParseError("\(key): \(error.message)") }
            } else {
                guard let n = UInt64(value) else { throw ParseError("\(key): '\(value)' is not a whole number") }
                number = n
            }
            pairs.append((key, number))
        }
        return try build(pairs)
    }

    /// `set-limits`' `limits` object: the same keys, integer values.
    package static func build(_ pairs: [(String, UInt64)]) throws(ParseError) -> ThrottleLimits {
        var limits = ThrottleLimits()
        var seen: Set<String> = []
        for (key, value) in pairs {
            guard seen.insert(key).inserted else { throw ParseError("\(key) given twice") }
            guard let (kind, field) = Self.field(key) else {
                throw ParseError(
                    "unknown limit '\(key)': expected iops-total, iops-read, iops-write, bps-total, bps-read or bps-write, with an optional -max or -max-length"
                )
            }
            guard value <= maxValue else { throw ParseError("\(key) must be at most \(maxValue)") }
            switch field {
            case 0: limits[kind].average = value
            case 1: limits[kind].burst = value
            default: limits[kind].burstSeconds = value
            }
        }
        try limits.validate()
        return limits
    }

    /// QEMU's `throttle_is_valid`, in its order.
    private func validate() throws(ParseError) {
        for (total, read, write) in [(Kind.iopsTotal, Kind.iopsRead, Kind.iopsWrite), (.bpsTotal, .bpsRead, .bpsWrite)]
        {
            let t = self[total]
            let r = self[read]
            let w = self[write]
            if (t.average > 0 || t.burst > 0) && (r.average > 0 || w.average > 0 || r.burst > 0 || w.burst > 0) {
                throw ParseError(
                    "\(total.name) cannot be used together with \(read.name) or \(write.name) (as in QEMU)")
            }
        }
        for kind in Kind.allCases {
            let l = self[kind]
            if l.burst > 0 && l.average == 0 { throw ParseError("\(kind.name)-max requires \(kind.name)") }
            if l.burst > 0 && l.burst < l.average {
                throw ParseError("\(kind.name)-max must not be lower than \(kind.name)")
            }
            if l.burstSeconds == 0 { throw ParseError("\(kind.name)-max-length must be at least 1") }
            if l.burstSeconds > 1 && l.burst == 0 {
                throw ParseError("\(kind.name)-max-length requires \(kind.name)-max")
            }
            if l.burst > 0 && l.burstSeconds > Self.maxValue / l.burst {
                throw ParseError("\(kind.name)-max times \(kind.name)-max-length must be at most \(Self.maxValue)")
            }
        }
    }

    /// `iops-total` → (.iopsTotal, 0), `…-max` → 1, `…-max-length` → 2.
    private static func field(_ key: String) -> (Kind, Int)? {
        for kind in Kind.allCases {
            if key == kind.name { return (kind, 0) }
            if key == kind.name + "-max" { return (kind, 1) }
            if key == kind.name + "-max-length" { return (kind, 2) }
        }
        return nil
    }

    /// The set limits as `KEY=VALUE` pairs in QEMU's order (the form `parse` reads back), bursts
    /// only when set, `*-max-length` only when not 1. Empty: no limit.
    package var pairs: [(key: String, value: UInt64)] {
        var out: [(key: String, value: UInt64)] = []
        for kind in Kind.allCases {
            let l = self[kind]
            guard l.average > 0 else { continue }
            out.append((kind.name, l.average))
            if l.burst > 0 { out.append((kind.name + "-max", l.burst)) }
            if l.burstSeconds != 1 { out.append((kind.name + "-max-length", l.burstSeconds)) }
        }
        return out
    }

    /// `iops-total=200,bps-write=10485760`, or `none`.
    package var text: String {
        let p = pairs
        return p.isEmpty ? "none" : p.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
    }
}
