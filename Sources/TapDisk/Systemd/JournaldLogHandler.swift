import Glibc
import Logging

/// A swift-log handler that writes one line per record to an fd (stderr by default), prefixed
/// with the `sd-daemon(3)` priority `<N>`.
///
/// Under systemd, stderr is connected to journald, which strips the `<N>` prefix and files the
/// line at that priority, so `journalctl -p warning -u tapdiskd@vm1` works without linking
/// libsystemd. Each record is formatted completely first and then handed to a single `write(2)`,
/// so lines from different threads never interleave (writes up to `PIPE_BUF` bytes to a pipe are
/// atomic; longer lines are still written whole, retried only after a partial write). Newlines
/// inside messages and values are escaped so one record is always exactly one journal entry.
package struct JournaldLogHandler: LogHandler {
    package var metadata: Logger.Metadata = [:]
    package var metadataProvider: Logger.MetadataProvider?
    package var logLevel: Logger.Level = .info

    private let label: String
    private let fd: Int32

    /// - Parameters:
    ///   - label: the logger's label, printed before each message.
    ///   - fd: where lines go; the handler never closes it.
    package init(label: String, fd: Int32 = 2, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.fd = fd
        self.metadataProvider = metadataProvider
    }

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// The syslog priority journald files the record at.
    package static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    package func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let explicit = event.metadata { merged.merge(explicit) { _, new in new } }
        if let error = event.error { merged["error"] = .string("\(error)") }
        let line = Self.format(level: event.level, label: label, message: event.message.description, metadata: merged)
        Self.writeAll(fd: fd, line)
    }

    /// `<N>label: message key=value ...\n`, metadata sorted by key so lines are diffable.
    package static func format(level: Logger.Level, label: String, message: String, metadata: Logger.Metadata) -> String
    {
        var line = "<\(priority(level))>\(label): \(escapeNewlines(message))"
        for key in metadata.keys.sorted() {
            line += " \(escapeNewlines(key))=\(quoteIfNeeded(metadata[key]!.description))"
        }
        line += "\n"
        return line
    }

    /// Quotes values a reader could not split unambiguously: empty, or containing whitespace,
    /// quotes, `=` or a backslash.
    static func quoteIfNeeded(_ value: String) -> String {
        let needsQuotes =
            value.isEmpty
            || value.unicodeScalars.contains { scalar in
                scalar.properties.isWhitespace || scalar == "\"" || scalar == "=" || scalar == "\\"
                    || scalar.value < 0x20 || scalar.value == 0x7f
            }
        guard needsQuotes else { return value }
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
        return out
    }

    static func escapeNewlines(_ text: String) -> String {
        guard text.contains(where: { $0 == "\n" || $0 == "\r" || $0 == "\r\n" }) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// One `write(2)` for the whole line; loops only on EINTR or a partial write. Logging must
    /// never fail the caller, so other errors (EPIPE, EAGAIN, EBADF) drop the line. (A closed
    /// journal stream raises SIGPIPE: systemd services get `IgnoreSIGPIPE=yes` by default, and
    /// the daemon must ignore SIGPIPE at startup when run by hand, so it surfaces here as EPIPE.)
    private static func writeAll(fd: Int32, _ line: String) {
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if n > 0 {
                    offset += n
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
    }
}
