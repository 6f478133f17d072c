import Glibc

/// The control sockets named by `--sockets` arguments, found afresh on every scrape so that
/// disks started or stopped since the last one appear or vanish without a restart.
package struct SocketSet: Sendable {
    package var patterns: [String]

    package init(patterns: [String]) {
        self.patterns = patterns
    }

    /// `(disk, path)` pairs sorted by path. A directory stands for its `*.sock`; anything else is
    /// a glob. The disk label is the file name without `.sock`; when two directories hold the
    /// same name, the later one is labelled by its whole path instead, so no two series collide.
    /// `*.vhost.sock` files are skipped: they are vhost-user sockets that tapdiskd-vhost@.socket
    /// keeps beside the control sockets, never control sockets themselves.
    package func expand() -> [(disk: String, path: String)] {
        var paths: [String] = []
        for pattern in patterns {
            var st = stat()
            let isDirectory = stat(pattern, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
            let expanded = isDirectory ? (pattern.hasSuffix("/") ? pattern : pattern + "/") + "*.sock" : pattern
            paths += Self.glob(expanded)
        }
        var seenPaths = Set<String>()
        var seenDisks = Set<String>()
        var result: [(disk: String, path: String)] = []
        for path in paths.sorted() where !path.hasSuffix(".vhost.sock") && seenPaths.insert(path).inserted {
            var name = String(path.split(separator: "/").last ?? Substring(path))
            if name.hasSuffix(".sock") { name.removeLast(5) }
            if !seenDisks.insert(name).inserted {
                name = path.hasSuffix(".sock") ? String(path.dropLast(5)) : path
                seenDisks.insert(name)
            }
            result.append((name, path))
        }
        return result
    }

    private static func glob(_ pattern: String) -> [String] {
        var g = glob_t()
        defer { globfree(&g) }
        guard Glibc.glob(pattern, 0, nil, &g) == 0 else { return [] }
        return (0..<Int(g.gl_pathc)).compactMap { g.gl_pathv[$0].map { String(cString: $0) } }
    }
}
