import Foundation
import Testing

/// `man/tapdiskd.8` documents exactly the options the built binary accepts: for `serve`, `ctl`,
/// `create`, `bench` and `top`, the long options between the page's `BEGIN <command>-options` / `END`
/// markers must be the long options `tapdiskd <command> --help` prints; every long option of those
/// five and of `demo` (which has no marked list) must appear somewhere on the page outside its
/// `.EX` examples, and the page may name no other; and the page renders without groff warnings.
/// `--help` itself (and `--version`, which the binary does not have) is left out of the
/// comparison.
@Suite struct ManPageTests {
    /// Repository root, from this file's location (Tests/TapDiskTests/Blkif/ManPageTests.swift).
    static let repoRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { url.deleteLastPathComponent() }
        return url.path
    }()

    static var manPage: String { repoRoot + "/man/tapdiskd.8" }

    static let ignored: Set<String> = ["--help", "--version"]

    /// Long options in `text`: `--` followed by lowercase letters and inner hyphens.
    static func longOptions(in text: String) -> Set<String> {
        var found = Set<String>()
        let scalars = Array(text.unicodeScalars)
        var i = 0
        while i + 2 < scalars.count {
            let startsOption =
                scalars[i] == "-" && scalars[i + 1] == "-" && ("a"..."z").contains(scalars[i + 2])
                && (i == 0 || scalars[i - 1] != "-")
            guard startsOption else {
                i += 1
                continue
            }
            var j = i + 2
            while j < scalars.count, ("a"..."z").contains(scalars[j]) || scalars[j] == "-" { j += 1 }
            var option = String(String.UnicodeScalarView(scalars[i..<j]))
            while option.hasSuffix("-") { option.removeLast() }
            if !ignored.contains(option) { found.insert(option) }
            i = j
        }
        return found
    }

    /// The page's roff source with `\-` (a roff minus) read as `-`.
    static func roffText() throws -> String {
        try String(contentsOfFile: manPage, encoding: .utf8).replacingOccurrences(of: "\\-", with: "-")
    }

    /// The lines between `.\" BEGIN name` and `.\" END name`, markers excluded.
    static func section(_ name: String, of text: String) throws -> String {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let begin = try #require(lines.firstIndex { $0.hasPrefix(".\\\" BEGIN \(name)") }, "no BEGIN \(name) marker")
        let end = try #require(
            lines[begin...].firstIndex { $0.hasPrefix(".\\\" END \(name)") }, "no END \(name) marker")
        return lines[(begin + 1)..<end].joined(separator: "\n")
    }

    static func help(_ arguments: [String]) throws -> String {
        let binary = DaemonProcess.binary
        try #require(FileManager.default.isExecutableFile(atPath: binary), "tapdiskd not built at \(binary)")
        let r = try Shell.run([binary] + arguments)
        #expect(r.status == 0, "\(arguments.joined(separator: " ")): \(r.stderr)")
        return r.stdout
    }

    @Test(arguments: [
        (["serve", "--help"], "serve-options"),
        (["ctl", "--help"], "ctl-options"),
        (["create", "--help"], "create-options"),
        (["bench", "--help"], "bench-options"),
        (["top", "--help"], "top-options"),
    ])
    func manPageListsExactlyTheHelpOptions(arguments: [String], marker: String) throws {
        let fromHelp = Self.longOptions(in: try Self.help(arguments))
        #expect(!fromHelp.isEmpty)
        let fromPage = Self.longOptions(in: try Self.section(marker, of: try Self.roffText()))
        #expect(
            fromPage == fromHelp,
            "only in --help: \(fromHelp.subtracting(fromPage).sorted()); only in the man page: \(fromPage.subtracting(fromHelp).sorted())"
        )
    }

    /// The page without its `.EX`/`.EE` example blocks (they quote other tools' options too).
    static func withoutExamples(_ text: String) -> String {
        var inExample = false
        var kept: [Substring] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix(".EX") { inExample = true }
            if !inExample { kept.append(line) }
            if line.hasPrefix(".EE") { inExample = false }
        }
        return kept.joined(separator: "\n")
    }

    /// No option is mentioned in the synopsis or prose that no command has, and every option of
    /// every command is on the page.
    @Test func everyOptionOnThePageExists() throws {
        var known = Set<String>()
        for command in ["serve", "ctl", "create", "demo", "bench", "top"] {
            known.formUnion(Self.longOptions(in: try Self.help([command, "--help"])))
        }
        let onPage = Self.longOptions(in: Self.withoutExamples(try Self.roffText()))
        #expect(onPage.subtracting(known).isEmpty, "unknown options on the page: \(onPage.subtracting(known).sorted())")
        #expect(
            known.subtracting(onPage).isEmpty, "options missing from the page: \(known.subtracting(onPage).sorted())")
    }

    /// The page formats without any groff warning (`-ww` enables them all).
    @Test(.enabled(if: Shell.which("groff") != nil, "groff not installed"))
    func rendersWithoutWarnings() throws {
        let r = try Shell.run(["groff", "-man", "-Tutf8", "-ww", "-z", Self.manPage])
        #expect(r.status == 0)
        #expect(r.stderr.isEmpty, "\(r.stderr)")
    }

    @Test func optionParsing() {
        #expect(
            Self.longOptions(in: "  --image <image>  x --on-nospace, [--json] ---x --help") == [
                "--image", "--on-nospace", "--json",
            ])
    }
}
