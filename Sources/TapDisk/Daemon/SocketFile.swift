import CLibAIO
import Glibc

/// The control socket file at `--socket`: the checks made before anything else is touched, and
/// the identity of the file this daemon bound.
///
/// A socket file is found again by device and inode, not by path: after an operator removed our
/// file, another daemon may have bound the same path, and removing "our" path at exit would then
/// cut that daemon off from its toolstack.
package struct SocketFile: Sendable, Equatable {
    package let path: String
    package let device: UInt64
    package let inode: UInt64

    /// What is at the path before binding.
    package enum Existing: Equatable, Sendable {
        case nothing
        /// A socket file nobody accepts on: replaced at bind.
        case stale
    }

    /// Records the identity of the file now at `path` (call right after bind).
    package init?(boundAt path: String) {
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else { return nil }
        self.path = path
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }

    /// Whether `path` still names the socket file this daemon bound.
    package var isStillOurs: Bool {
        var st = stat()
        guard lstat(path, &st) == 0 else { return false }
        return st.st_mode & S_IFMT == S_IFSOCK && UInt64(st.st_dev) == device && UInt64(st.st_ino) == inode
    }

    /// Removes the file at exit only if it is still ours (between the check and the unlink
    /// another daemon would have to remove and rebind the path; nothing closes that window short
    /// of a lock the other side does not take).
    @discardableResult
    package func removeIfStillOurs() -> Bool {
        guard isStillOurs else { return false }
        return unlink(path) == 0
    }

    /// Every check on `path` that can be made without creating anything: run before the image is
    /// opened, so a start that fails for a socket reason leaves no trace anywhere: no socket
    /// file, and the image not even opened.
    package static func check(_ path: String) throws(Daemon.StartError) -> Existing {
        let shown = path
        guard !path.isEmpty else { throw Daemon.StartError(description: "--socket: empty path") }
        // sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
        guard path.utf8.count < 108 else {
            throw Daemon.StartError(
                description: "\(shown): socket path is \(path.utf8.count) bytes; AF_UNIX allows at most 107")
        }
        let directory = path.hasPrefix("/") || path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        var dirStat = stat()
        if stat(directory.isEmpty ? "/" : directory, &dirStat) != 0 {
            throw Daemon.StartError(
                description: "\(shown): cannot use the socket's directory: \(Errno.current)")
        }
        guard dirStat.st_mode & S_IFMT == S_IFDIR else {
            throw Daemon.StartError(description: "\(shown): the socket's directory is not a directory")
        }
        var st = stat()
        guard lstat(path, &st) == 0 else { return .nothing }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            throw Daemon.StartError(description: "\(shown) exists and is not a socket; not replacing it")
        }
        let probe = clibaio_unix_connect(path)
        if probe >= 0 {
            close(probe)
            throw Daemon.StartError(description: "\(shown): \(describeListener(at: path))")
        }
        switch -probe {
        case ECONNREFUSED, ENOENT:
            return .stale
        case EPROTOTYPE:
            throw Daemon.StartError(
                description:
                    "\(shown): a socket of another type is listening there (EPROTOTYPE: not a SEQPACKET socket); not replacing it"
            )
        default:
            throw Daemon.StartError(
                description: "\(shown): cannot probe the existing socket: \(Errno(rawValue: -probe))")
        }
    }

    /// Who answers on a live SEQPACKET socket: a tapdiskd answers `info` with `protocol` 1 and
    /// its image, or refuses it with a well-formed error (say `busy` at its connection limit);
    /// anything else is only "something".
    static func describeListener(at path: String) -> String {
        if let client = try? ControlClient(socketPath: path),
            let reply = try? client.request("info", timeoutMilliseconds: 1000)
        {
            if reply["ok"] == .bool(true), reply["protocol"]?.int64Value == 1,
                let image = reply["image"]?.stringValue
            {
                return "a live tapdiskd is already serving this socket (image \(image))"
            }
            if reply["ok"] == .bool(false), let code = reply["error"]?["code"]?.stringValue {
                return "a live tapdiskd is already serving this socket (it refused info: \(code))"
            }
        }
        return "something is already listening on this socket (it does not answer as tapdiskd); not replacing it"
    }
}

extension String {
    /// The text with control characters escaped (`\n`, `\t`, `\r`, `\xNN`) and backslashes
    /// doubled, so a path with a newline cannot split a one-line error or log record in two.
    package var escapedForOneLine: String {
        var out = ""
        out.reserveCapacity(utf8.count)
        for scalar in unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\\": out += "\\\\"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\x" + (hex.count < 2 ? "0" + hex : hex)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }
}
