import Glibc

/// Reads a `/proc` file whole.
///
/// Foundation's `String(contentsOfFile:)` stops after the first `read` of a file whose `stat`
/// size is 0, and a `/proc` file hands out about one page per `read`: `/proc/net/unix` on this
/// host came back as 4,050 of its 4,965 bytes. A socket listed past that page was invisible, which
/// made `DaemonLifecycleTests` fail 1 run in 3 (whether a new socket lands past the first page
/// depends on its hash bucket). This reads until end of file.
enum ProcFile {
    static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { return nil }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
