import Glibc

/// The live progress line: redrawn in place on a terminal, plain lines otherwise (CI logs).
final class DemoProgress {
    let quiet: Bool
    private let isTerminal = isatty(1) == 1
    private var lineOpen = false
    private var lastPlainDecile = -1

    init(quiet: Bool) { self.quiet = quiet }

    func say(_ line: String) {
        guard !quiet else { return }
        finishLine()
        print(line)
        fflush(nil)
    }

    func update(result: DemoScenario.Result, totalWrites: Int, seconds: Double) {
        guard !quiet else { return }
        let answered = result.okay + result.error
        let mibWritten = Double(answered) * Double(DemoScenario.requestBytes) / 1_048_576
        let rate = seconds > 0 ? mibWritten / seconds : 0
        let line =
            "  answered \(answered)/\(totalWrites) writes (\(format(mibWritten)) MiB)  OKAY \(result.okay)  ERROR \(result.error)  \(format(rate)) MiB/s"
        if isTerminal {
            print("\r\(line)\u{1B}[K", terminator: "")
            lineOpen = true
        } else {
            let decile = totalWrites > 0 ? answered * 4 / totalWrites : 0
            guard decile != lastPlainDecile else { return }
            lastPlainDecile = decile
            print(line)
        }
        fflush(nil)
    }

    func finishLine() {
        if lineOpen {
            print("")
            lineOpen = false
        }
        lastPlainDecile = -1
    }

    func format(_ x: Double) -> String {
        let tenths = Int((x * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }
}
