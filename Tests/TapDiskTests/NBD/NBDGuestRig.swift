import Foundation
import Glibc
import Testing

@testable import TapDisk

/// One scenario of `NBDGuestTests`: the NBD server under test serving a sparse image on a small
/// loop-mounted ext4, a Linux guest booted by `scripts/guest.sh run-nbd` whose virtio-blk disk is
/// QEMU's NBD client (`-blockdev driver=nbd`), and QMP on a unix socket for the test to play the
/// management layer. `teardown()` (also `deinit`) stops the server and unmounts; QEMU never
/// outlives `boot` (guest.sh kills it after its timeout).
final class NBDGuestRig {
    let fs: LoopFilesystem
    let image: String
    let server: NBDServerProcess
    let qmpSocket: String
    private var tornDown = false

    /// A sparse image of `imageBytes` on a fresh ext4 of `filesystemMiB`, with `leaveFree` bytes
    /// left free (a filler file takes the rest), served over NBD with `arguments` (tapdiskd).
    init(imageBytes: UInt64, filesystemMiB: Int, leaveFree: UInt64, arguments: [String] = []) throws {
        fs = try LoopFilesystem(sizeMiB: filesystemMiB)
        image = fs.path("disk.img")
        do {
            try NBDClientTools.makeSparseImage(image, size: imageBytes, data: [], seed: 0)
            try fs.fill(leaving: leaveFree)
            server = try NBDServerProcess(image: image, arguments: arguments)
        } catch {
            fs.cleanup()
            throw error
        }
        qmpSocket = server.directory + "/qmp.sock"
    }

    deinit { teardown() }

    func teardown() {
        if tornDown { return }
        tornDown = true
        server.forceStop()
        fs.cleanup()
    }

    /// Boots the guest with `script` and `werror`, and returns when it powered off (or guest.sh
    /// killed QEMU after `timeoutSeconds`). `poll` runs every 50 ms with the console so far and
    /// the QMP connection once QEMU serves it (nil before).
    func boot(
        script: String, name: String, werror: String, timeoutSeconds: Int = 150,
        poll: (GuestConsole, QMPClient?) -> Void = { _, _ in }
    ) throws -> VhostUserGuestRig.GuestRun {
        var qmp: QMPClient? = nil
        return try VhostUserGuestRig.bootGuest(
            script: script, name: name, directory: server.directory,
            environment: [
                "TAPDISK_GUEST_TIMEOUT=\(timeoutSeconds)", "TAPDISK_GUEST_WERROR=\(werror)",
                "TAPDISK_GUEST_QMP=\(qmpSocket)",
            ],
            guestArguments: ["run-nbd", server.socketPath]
        ) { console in
            if qmp == nil, access(qmpSocket, F_OK) == 0 { qmp = try? QMPClient(socketPath: qmpSocket) }
            poll(console, qmp)
        }
    }
}
