import ArgumentParser
import Glibc
import TapDisk

/// `tapdiskd ctl`: the toolstack's commands from a shell, over the library's one client.
struct CtlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Control a running tapdiskd: info, status, stats, pause, resume, detach, events, set-limits.")

    enum Action: String, ExpressibleByArgument, CaseIterable {
        case info, status, stats, pause, resume, detach, events
        case setLimits = "set-limits"
    }

    @Option(help: "The daemon's control socket.")
    var socket: String

    @Argument(help: "info | status | stats | pause | resume | detach | events | set-limits")
    var action: Action

    @Argument(
        help: ArgumentHelp(
            "With set-limits: the new limits, written as for serve (iops-total=200,bps-write=10M,...), or none.",
            valueName: "LIMITS"))
    var limits: String?

    @Flag(name: .customLong("fail-held"), help: "With resume: answer held requests ERROR instead of resubmitting them.")
    var failHeld = false

    @Flag(help: "Print replies and events as JSON (one object per line).")
    var json = false

    func validate() throws {
        if action == .setLimits {
            guard let limits else { throw ValidationError("set-limits needs the limits (or none)") }
            do { _ = try ThrottleLimits.parse(limits) } catch { throw ValidationError("set-limits: \(error.message)") }
        } else if limits != nil {
            throw ValidationError("only set-limits takes an argument")
        }
    }

    func run() throws {
        let client: ControlClient
        do {
            client = try ControlClient(socketPath: socket)
        } catch {
            printError("tapdiskd: cannot connect to \(socket): \(error)")
            throw ExitCode(1)
        }
        do {
            if action == .events {
                try client.call("subscribe")
                while true {
                    guard let event = try client.nextEvent(timeoutMilliseconds: 60_000) else { continue }
                    print(json ? JSONWriter.string(.object(event)) : Self.humanEvent(event))
                    // stdout is block-buffered on a pipe: without a flush, `ctl events | consumer`
                    // sees nothing until 4 KiB of events piled up (or ever, as this never returns).
                    fflush(nil)
                }
            }
            var arguments = JSONObject()
            if action == .resume && failHeld { arguments.set("fail-held", true) }
            if action == .setLimits, let limits, let parsed = try? ThrottleLimits.parse(limits) {
                var object = JSONObject()
                for (key, value) in parsed.pairs { object.set(key, .uint(value)) }
                arguments.set("limits", .object(object))
            }
            let reply = try client.request(action.rawValue, arguments, timeoutMilliseconds: 600_000)
            if json {
                print(JSONWriter.string(.object(reply)))
            } else if reply["ok"]?.boolValue == true {
                var lines: [String] = []
                Self.flatten(reply, prefix: "", into: &lines)
                print(lines.isEmpty ? "ok" : lines.joined(separator: "\n"))
            }
            if reply["ok"]?.boolValue != true {
                let error = reply["error"]?.objectValue
                if !json {
                    printError(
                        "tapdiskd: \(error?["code"]?.stringValue ?? "error"): \(error?["message"]?.stringValue ?? "")")
                }
                throw ExitCode(1)
            }
        } catch let e as ControlClient.ClientError {
            printError("tapdiskd: \(e)")
            throw ExitCode(1)
        }
    }

    static func flatten(_ object: JSONObject, prefix: String, into lines: inout [String]) {
        for member in object where !(prefix.isEmpty && (member.key == "ok" || member.key == "tag")) {
            let key = prefix.isEmpty ? member.key : "\(prefix).\(member.key)"
            if prefix.isEmpty, member.key == "latency", case .object(let latency) = member.value {
                lines += humanLatency(latency)
            } else if case .object(let nested) = member.value {
                flatten(nested, prefix: key, into: &lines)
            } else {
                lines.append("\(key): \(Self.text(member.value))")
            }
        }
    }

    /// `stats`' histograms as one line per operation (the buckets themselves are in `--json`):
    /// `latency.read: count=N mean-us=X p50-us<=B p99-us<=B`, where a quantile is the bound of
    /// the bucket it falls in (`>10000000` beyond the last).
    static func humanLatency(_ latency: JSONObject) -> [String] {
        let bounds = latency["bounds-ns"]?.arrayValue?.compactMap { $0.numberValue?.uint64 } ?? []
        var lines: [String] = []
        for member in latency where member.key != "bounds-ns" {
            guard let h = member.value.objectValue,
                let buckets = h["buckets"]?.arrayValue?.compactMap({ $0.numberValue?.uint64 }),
                let sum = h["sum-ns"]?.numberValue?.uint64, buckets.count == bounds.count + 1
            else { continue }
            let snapshot = LatencySnapshot(buckets: buckets, sumNanos: sum)
            var line = "latency.\(member.key): count=\(snapshot.count)"
            if snapshot.count > 0 {
                let mean = Double(sum) / Double(snapshot.count) / 1000
                line += " mean-us=\((mean * 10).rounded() / 10)"
                for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
                    let bound = snapshot.upperBound(quantile: q)
                    line += " \(name)-us" + (bound.map { "<=\($0 / 1000)" } ?? ">\((bounds.last ?? 0) / 1000)")
                }
            }
            lines.append(line)
        }
        return lines
    }

    static func text(_ value: JSONValue) -> String {
        switch value {
        case .string(let s): s
        case .null: "-"
        default: JSONWriter.string(value)
        }
    }

    static func humanEvent(_ event: JSONObject) -> String {
        let name = event["event"]?.stringValue ?? "?"
        let fields = event.filter { $0.key != "event" }.map { "\($0.key)=\(text($0.value))" }
        return "\(name) \(fields.joined(separator: " "))"
    }
}
