import CLibAIO
import Glibc

/// Where the NBD front listens: `--nbd unix:PATH`, `--nbd tcp:HOST:PORT`, or a socket systemd
/// passed with `FileDescriptorName=nbd`.
///
/// `tcp:` takes a numeric port and a host that is a name, an IPv4 address, or an IPv6 address in
/// brackets (`tcp:[::1]:10809`); an empty host (`tcp::10809`) listens on every address. There is
/// no TLS: listen on TCP only where every peer that can reach the port may read and write the disk.
package enum NBDListenAddress: Equatable, Sendable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: UInt16)
    /// The socket-activated listener (fd from `LISTEN_FDS`, named `nbd`).
    case activated(fd: Int32)

    /// The name the NBD socket unit gives its listener (`FileDescriptorName=nbd`).
    package static let activationName = "nbd"

    package struct ParseError: Error, Equatable, CustomStringConvertible {
        package var description: String
    }

    package init(parsing text: String) throws(ParseError) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw ParseError(description: "--nbd unix: needs a path") }
            guard path.utf8.count < 108 else {
                throw ParseError(description: "--nbd \(text): longer than AF_UNIX allows (107 bytes)")
            }
            guard !path.utf8.contains(0) else { throw ParseError(description: "--nbd: NUL in the path") }
            self = .unix(path: path)
        } else if text.hasPrefix("tcp:") {
            let rest = text.dropFirst(4)
            guard let colon = rest.lastIndex(of: ":") else {
                throw ParseError(description: "--nbd \(text): expected tcp:HOST:PORT")
            }
            var host = String(rest[..<colon])
            let portText = rest[rest.index(after: colon)...]
            guard let port = UInt16(portText), port > 0 else {
                throw ParseError(description: "--nbd \(text): the port must be 1-65535")
            }
            if host.hasPrefix("[") {
                guard host.hasSuffix("]"), host.count > 2 else {
                    throw ParseError(description: "--nbd \(text): unclosed [ in the IPv6 address")
                }
                host = String(host.dropFirst().dropLast())
            } else if host.contains(":") {
                throw ParseError(description: "--nbd \(text): write an IPv6 address in brackets, tcp:[ADDR]:PORT")
            }
            guard !host.utf8.contains(0), host.utf8.count <= 253 else {
                throw ParseError(description: "--nbd \(text): invalid host")
            }
            self = .tcp(host: host, port: port)
        } else {
            throw ParseError(description: "--nbd \(text): expected unix:PATH or tcp:HOST:PORT")
        }
    }

    package var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let host, let port): host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        case .activated(let fd): "activated:fd\(fd)"
        }
    }

    /// The activated NBD listener in `environment`, if systemd passed a listening stream socket
    /// named `nbd` (the check alone; the daemon takes it through `SystemdNotifier.listenedSockets`).
    package static func activated(environment: SystemdNotifier.Environment) -> NBDListenAddress? {
        guard let fds = SystemdListenFDs(environment: environment), let fd = fds.fd(named: activationName),
            clibaio_is_stream_listener(fd) == 1
        else { return nil }
        return .activated(fd: fd)
    }

    /// A listening, non-blocking, cloexec socket (a unix one mode 0600). A unix path's stale
    /// socket file (nobody accepting) is replaced; a live listener's, or a file that is not a socket, never is.
    package func listen(backlog: Int32 = 64) throws(ParseError) -> FileDescriptor {
        switch self {
        case .unix(let path):
            var st = stat()
            if lstat(path, &st) == 0 {
                guard st.st_mode & S_IFMT == S_IFSOCK else {
                    throw ParseError(description: "--nbd \(self): exists and is not a socket; not replacing it")
                }
                let probe = clibaio_stream_connect(path)
                if probe >= 0 {
                    close(probe)
                    throw ParseError(description: "--nbd \(self): something is already listening there")
                }
                unlink(path)
            }
            // 0600 from the start: whoever can connect can read and write the disk. The umask is
            // the process's, but this runs at startup, before any other thread exists.
            let previous = umask(0o177)
            let fd = clibaio_stream_listen(path, backlog)
            umask(previous)
            guard fd >= 0 else {
                throw ParseError(description: "cannot listen on --nbd \(self): \(Errno(rawValue: -fd))")
            }
            return FileDescriptor(adopting: fd)
        case .tcp(let host, let port):
            let fd = clibaio_tcp_listen(host, String(port), backlog)
            guard fd >= 0 else {
                throw ParseError(description: "cannot listen on --nbd \(self): \(Errno(rawValue: -fd))")
            }
            return FileDescriptor(adopting: fd)
        case .activated(let fd):
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            return FileDescriptor(adopting: fd)
        }
    }
}
