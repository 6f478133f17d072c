import ArgumentParser
import Glibc
import TapDisk

/// `tapdiskd`: serving a disk is the default subcommand, so a toolstack runs
/// `tapdiskd --image PATH --socket PATH` directly.
@main
struct TapdiskdCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tapdiskd",
        abstract:
            "A userspace block-tap daemon: serves one disk image with Linux AIO, over a Xen blkif ring or to a QEMU guest over vhost-user-blk.",
        discussion: "Every request gets exactly one answer; every failure reaches the frontend as an I/O error.",
        subcommands: [
            ServeCommand.self, CtlCommand.self, CreateCommand.self, DemoCommand.self, BenchCommand.self,
            TopCommand.self,
        ],
        defaultSubcommand: ServeCommand.self
    )

    /// Parses and runs, reporting a usage error as one line on stderr (toolstacks log stderr
    /// line by line; a multi-line usage dump would scatter one failure over many records).
    static func main() {
        let arguments = ArgumentPreflight.attachingNegativeNumbers(Array(CommandLine.arguments.dropFirst()))
        if let message = ArgumentPreflight.unknownSubcommand(arguments) {
            printError("tapdiskd: \(message)")
            Glibc.exit(ExitCode.validationFailure.rawValue)
        }
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch let exit as ExitCode {
            Glibc.exit(exit.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                exit(withError: error)
            }
            let message = self.message(for: error).split(separator: "\n").map { $0.trimmingSpaces }.joined(
                separator: " ")
            printError("tapdiskd: \(message)")
            Glibc.exit(code.rawValue == 0 ? 1 : code.rawValue)
        }
    }
}

/// A failure already explained on stderr; exits non-zero without ArgumentParser's usage text.
struct ReportedFailure: Error, CustomStringConvertible {
    var message: String
    var status: Int32 = 1
    var description: String { message }
}

/// One line to stderr with a single write(2), so concurrent writers never interleave it.
/// Control characters are escaped, so a path holding a newline cannot split the line in two.
func printError(_ line: String) {
    var text = (line.hasSuffix("\n") ? String(line.dropLast()) : line).escapedForOneLine
    text += "\n"
    _ = text.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
}

extension Substring {
    var trimmingSpaces: String {
        var s = self
        while let c = s.first, c.isWhitespace { s = s.dropFirst() }
        while let c = s.last, c.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
