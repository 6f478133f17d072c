import Glibc

/// The fds that arrived with one vhost-user message, owned until a handler takes them.
///
/// Whatever is not taken is closed when the owner goes away, so a rejected message (wrong fd
/// count, bad payload) can never leak the memfds or eventfds a hostile front-end pushed at us.
package struct ReceivedDescriptors: ~Copyable {
    private var raw: [Int32]

    package init() { raw = [] }

    /// Adopts fds just received (they become owned here).
    package init(adopting fds: [Int32]) { raw = fds }

    deinit {
        for fd in raw where fd >= 0 { _ = Glibc.close(fd) }
    }

    package var count: Int { raw.count }

    /// The raw fd at `index` while it is still owned here (for fstat/mmap without taking it).
    package func peek(_ index: Int) -> Int32? {
        guard raw.indices.contains(index), raw[index] >= 0 else { return nil }
        return raw[index]
    }

    /// Transfers one fd to a new owner; nil when out of range or already taken.
    package mutating func take(_ index: Int) -> FileDescriptor? {
        guard let fd = peek(index) else { return nil }
        raw[index] = -1
        return FileDescriptor(adopting: fd)
    }
}
