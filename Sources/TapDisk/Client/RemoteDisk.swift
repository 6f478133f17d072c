import CLibAIO
import Glibc

/// A frontend attached to a running daemon: the control connection that owns the attachment plus
/// the shared ring. The demo, the benchmark, `ctl`-driven tests and toolstack examples use it.
package final class RemoteDisk {
    package let control: ControlClient
    package let frontend: BlockFrontend
    /// The attach reply (geometry, features, ring-entries).
    package let attachReply: JSONObject

    package var sectors: UInt64 { attachReply["sectors"]?.uint64Value ?? 0 }
    package var sectorSize: Int { Int(attachReply["sector-size"]?.uint64Value ?? 512) }

    /// Connects, prepares the memfd and eventfds, and attaches (§3).
    package init(socketPath: String, pageOrder: Int = 4, dataPages: Int = 1024) throws(ControlClient.ClientError) {
        control = try ControlClient(socketPath: socketPath)
        do {
            frontend = try BlockFrontend(pageOrder: pageOrder, dataPages: dataPages)
        } catch {
            throw .system(error)
        }
        attachReply = try control.call(
            "attach", ["ring-page-order": .integer(pageOrder), "data-pages": .integer(dataPages)],
            fds: [frontend.memory.rawValue, frontend.kick.rawValue, frontend.notify.rawValue])
        let entries = attachReply["ring-entries"]?.uint64Value
        guard entries == UInt64(frontend.entries) else {
            throw .malformed("ring-entries \(entries.map(String.init) ?? "missing") != \(frontend.entries)")
        }
    }

    /// Waits for the notify eventfd or a hang-up of the owning connection (how a frontend learns
    /// the daemon died, §6.4). Returns false if the daemon is gone.
    /// POLLRDHUP is GNU-only and not imported; 0x2000 is its value on Linux.
    package func waitForResponses(timeoutMilliseconds: Int32) -> Bool {
        var fds = [
            pollfd(fd: frontend.notify.rawValue, events: Int16(POLLIN), revents: 0),
            pollfd(fd: control.fd.rawValue, events: Int16(0x2000), revents: 0),
        ]
        _ = poll(&fds, 2, timeoutMilliseconds)
        if fds[0].revents & Int16(POLLIN) != 0 { frontend.notify.drain() }
        return fds[1].revents & Int16(POLLHUP | 0x2000) == 0
    }

    /// Detaches; returns the daemon's `completed` and `req-cons`.
    package func detach() throws(ControlClient.ClientError) -> (completed: UInt64, reqCons: UInt64) {
        let reply = try control.call("detach", timeoutMilliseconds: 120_000)
        return (reply["completed"]?.uint64Value ?? 0, reply["req-cons"]?.uint64Value ?? 0)
    }
}
