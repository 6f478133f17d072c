import CLibAIO
import Glibc

/// A connection still in the NBD handshake (Daemon+NBD.swift): its socket, the state machine,
/// what is still to be sent, and the deadline by which it must have entered transmission.
final class NBDHandshakeClient {
    let fd: Int32
    var handshake: NBDHandshake
    var output: [UInt8] = []
    var sent = 0
    let deadline: UInt64
    let peer: String

    init(fd: Int32, export: NBDExport, deadline: UInt64) {
        self.fd = fd
        handshake = NBDHandshake(export: export)
        self.deadline = deadline
        var name = [CChar](repeating: 0, count: 80)
        clibaio_peer_name(fd, &name, Int32(name.count))
        peer = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        handshake.greeting(into: &output)
    }

    /// Writes what the socket takes. False when the peer is gone.
    func flush() -> Bool {
        while sent < output.count {
            let n = output.withUnsafeBytes { write(fd, $0.baseAddress! + sent, $0.count - sent) }
            if n > 0 {
                sent += n
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                return n < 0 && errno == EAGAIN
            }
        }
        output.removeAll(keepingCapacity: true)
        sent = 0
        return true
    }

    var hasUnsentOutput: Bool { sent < output.count }
}
