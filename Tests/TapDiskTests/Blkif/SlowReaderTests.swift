import CLibAIO
import Foundation
import Glibc
import Testing

@testable import TapDisk

/// §2: the daemon never blocks on a slow reader. A client that sends requests and never reads a
/// reply fills its socket and then its bounded queue; the daemon closes that connection and keeps
/// serving everyone else, including the attached frontend.
@Suite struct SlowReaderTests {
    @Test func aClientThatNeverReadsIsClosedAndNobodyElseWaits() throws {
        let daemon = try DaemonProcess(imageBytes: 16 << 20)
        let disk = try RemoteDisk(socketPath: daemon.socketPath, pageOrder: 0, dataPages: 4)
        let hog = try daemon.client()
        let request = Array(#"{"cmd":"stats"}"#.utf8)
        var sent = 0
        var closed = false
        let deadline = Date().addingTimeInterval(20)
        while !closed && Date() < deadline {
            let n = request.withUnsafeBytes {
                clibaio_send_datagram(hog.fd.rawValue, $0.baseAddress, $0.count, nil, 0, 1)
            }
            if n >= 0 {
                sent += 1
            } else if -n == EAGAIN {
                // The daemon is not reading faster than it can reply; give it a moment.
                usleep(1000)
            } else {
                closed = true  // EPIPE / ECONNRESET: the daemon hung up on us
            }
            if sent % 64 == 0, clibaio_peer_hung_up(hog.fd.rawValue) == 1 { closed = true }
        }
        #expect(closed, "the daemon kept a connection that never reads (sent \(sent))")
        #expect(sent > ControlConnection.replyQueueLimit)
        // Everyone else is served: a new control connection and the attached frontend.
        let other = try daemon.client()
        #expect(try other.call("status")["attached"]?.boolValue == true)
        #expect(DiskDriver(disk).roundTrip(sector: 0, seed: 1))
    }
}
