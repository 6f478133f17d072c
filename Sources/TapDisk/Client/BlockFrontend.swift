import CLibAIO
import Glibc

/// The frontend side of a disk: shared memory, ring producer, eventfds.
///
/// It owns what a frontend must prepare before `attach` (§3): a sealed memfd holding the ring
/// and the data pages, a kick and a notify eventfd. Tests, the demo, the benchmark and `ctl` all
/// drive disks through this one type so there is one implementation of the frontend discipline.
package final class BlockFrontend {
    package let pageOrder: Int
    package let dataPages: Int
    package let memory: FileDescriptor
    package let kick: FileDescriptor
    package let notify: FileDescriptor
    private let mapping: SharedMapping
    package private(set) var ring: FrontendRing

    /// Creates the memfd (sealed against shrinking), maps it, and lays out a fresh ring whose
    /// indices start at `startIndex` (tests use values near 2^32 to exercise wrap-around).
    package init(pageOrder: Int, dataPages: Int, startIndex: UInt32 = 0) throws(Errno) {
        self.pageOrder = pageOrder
        self.dataPages = dataPages
        let bytes = RingLayout.sharedBytes(pageOrder: pageOrder, dataPages: dataPages)
        let fd = FileDescriptor(
            adopting: try Errno.check(
                clibaio_memfd_create("tapdisk-ring", clibaio_MFD_CLOEXEC | clibaio_MFD_ALLOW_SEALING)))
        guard ftruncate(fd.rawValue, off_t(bytes)) == 0 else { throw Errno.current }
        _ = try Errno.check(clibaio_add_seals(fd.rawValue, clibaio_F_SEAL_SHRINK | clibaio_F_SEAL_GROW))
        mapping = try SharedMapping(fd: fd, byteCount: bytes)
        memory = fd
        kick = try FileDescriptor.eventFD()
        notify = try FileDescriptor.eventFD()
        FrontendRing.initialize(base: mapping.base, pageOrder: pageOrder, startIndex: startIndex)
        ring = FrontendRing(base: mapping.base, pageOrder: pageOrder)
    }

    package var entries: UInt32 { ring.entries }
    package var ringBase: UnsafeMutableRawPointer { mapping.base }

    /// Start of data page `gref`.
    package func page(_ gref: UInt32) -> UnsafeMutableRawPointer {
        precondition(Int(gref) < dataPages)
        return mapping.base + ((1 << pageOrder) + Int(gref)) * RingLayout.pageSize
    }

    /// What an in-process engine needs to serve this frontend: its own mapping of the memfd and
    /// duplicates of the eventfds (the same objects a daemon receives through SCM_RIGHTS).
    package func makeAttachment() throws(Errno) -> RingAttachment {
        let bytes = RingLayout.sharedBytes(pageOrder: pageOrder, dataPages: dataPages)
        return RingAttachment(
            mapping: try SharedMapping(fd: memory, byteCount: bytes), kick: try kick.duplicate(),
            notify: try notify.duplicate(), pageOrder: pageOrder, dataPages: dataPages)
    }

    package var freeRequests: UInt32 { ring.freeRequests }
    package var outstanding: UInt32 { ring.outstanding }

    /// Places a request on the ring; it becomes visible at `push`.
    package func enqueue(_ request: clibaio_blkif_request) {
        ring.produce(request)
    }

    /// Publishes enqueued requests and kicks the daemon when its `req_event` asks for it.
    package func push() {
        if ring.pushRequests() { kick.signal() }
    }

    /// Publishes enqueued requests and does not kick, whatever `req_event` says: what a frontend
    /// that stops between the two steps leaves (tests use it to detach with requests unconsumed).
    package func publishWithoutKick() { _ = ring.pushRequests() }

    /// Consumes every published response. A response count the daemon could not have produced is
    /// reported as `violation` rather than read.
    package func reap(_ body: (FrontendRing.Response) -> Void) -> FrontendRing.Next {
        while true {
            switch ring.nextResponse() {
            case .none:
                if ring.finalCheckForResponses() { continue }
                return .none
            case .violation:
                return .violation
            case .response(let r):
                body(r)
            }
        }
    }

    /// Waits until the notify eventfd is readable (or the timeout passes), then resets it.
    @discardableResult
    package func waitForNotification(timeoutMilliseconds: Int32) -> Bool {
        var p = pollfd(fd: notify.rawValue, events: Int16(POLLIN), revents: 0)
        let n = poll(&p, 1, timeoutMilliseconds)
        if n > 0 { notify.drain() }
        return n > 0
    }
}
