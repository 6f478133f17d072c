import CLibAIO

/// epoll, the one place a disk's thread sleeps.
///
/// Tokens are caller-chosen u64s rather than fds so that a closed-and-reused fd number can never
/// be mistaken for the object that used to own it.
package struct Poller: ~Copyable {
    package struct Ready {
        package var token: UInt64
        package var events: UInt32
        package var isReadable: Bool { events & (clibaio_EPOLLIN | clibaio_EPOLLHUP | clibaio_EPOLLERR) != 0 }
        package var isHangup: Bool { events & (clibaio_EPOLLHUP | clibaio_EPOLLRDHUP | clibaio_EPOLLERR) != 0 }
    }

    package static let maxEvents = 64

    private let epoll: FileDescriptor
    private let tokens: UnsafeMutablePointer<UInt64>
    private let events: UnsafeMutablePointer<UInt32>

    package init() throws(Errno) {
        epoll = FileDescriptor(adopting: try Errno.check(clibaio_epoll_create()))
        tokens = .allocate(capacity: Self.maxEvents)
        events = .allocate(capacity: Self.maxEvents)
    }

    deinit {
        tokens.deallocate()
        events.deallocate()
    }

    package func add(_ fd: Int32, token: UInt64, events: UInt32 = clibaio_EPOLLIN) throws(Errno) {
        _ = try Errno.check(clibaio_epoll_add(epoll.rawValue, fd, events, token))
    }

    package func modify(_ fd: Int32, token: UInt64, events: UInt32) throws(Errno) {
        _ = try Errno.check(clibaio_epoll_modify(epoll.rawValue, fd, events, token))
    }

    package func remove(_ fd: Int32) {
        _ = clibaio_epoll_remove(epoll.rawValue, fd)
    }

    /// Waits up to `timeoutMilliseconds` (-1 forever); returns how many sources are ready, each
    /// then read with `ready(at:)` until the next wait. EINTR counts as a wakeup with nothing ready.
    package func wait(timeoutMilliseconds: Int32) -> Int {
        let n = clibaio_epoll_wait(epoll.rawValue, tokens, events, Int32(Self.maxEvents), timeoutMilliseconds)
        return n > 0 ? Int(n) : 0
    }

    /// The `index`th source the last `wait` reported.
    package func ready(at index: Int) -> Ready {
        precondition(index >= 0 && index < Self.maxEvents)
        return Ready(token: tokens[index], events: events[index])
    }
}
