/// What the command line needs before ArgumentParser sees it.
///
/// ArgumentParser reads `--pause-timeout -1` as the option without a value followed by an
/// option named `-1`, and reports "Missing value for '--pause-timeout'", which hides the actual
/// mistake; and an unknown first word such as `tapdiskd frobnicate` falls through to the default
/// subcommand, which then complains about a missing `--image`. Both are usage errors (exit 64),
/// and a usage error must say what was typed wrong, not what ArgumentParser tripped over next.
enum ArgumentPreflight {
    static let subcommands = ["serve", "ctl", "create", "demo", "bench", "top", "help"]

    /// A message for a first word that is neither an option nor a subcommand.
    static func unknownSubcommand(_ arguments: [String]) -> String? {
        guard let first = arguments.first, !first.hasPrefix("-"), !subcommands.contains(first) else { return nil }
        return
            "unknown subcommand '\(first)'; expected one of serve, ctl, create, demo, bench, top (see tapdiskd --help)"
    }

    /// `--name -1` becomes `--name=-1`, so a negative number reaches the option's own validation
    /// and is reported as an invalid value. No option or argument of tapdiskd takes a negative
    /// number, and none of its options is spelled like one.
    static func attachingNegativeNumbers(_ arguments: [String]) -> [String] {
        var out: [String] = []
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            if a == "--" {
                out += arguments[i...]
                break
            }
            if a.hasPrefix("--"), a.count > 2, !a.contains("="), i + 1 < arguments.count,
                isNegativeNumber(arguments[i + 1])
            {
                out.append(a + "=" + arguments[i + 1])
                i += 2
                continue
            }
            out.append(a)
            i += 1
        }
        return out
    }

    static func isNegativeNumber(_ text: String) -> Bool {
        let rest = text.utf8.dropFirst()
        guard text.utf8.first == UInt8(ascii: "-"), let c = rest.first else { return false }
        return (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || c == UInt8(ascii: ".")
    }
}
