import Glibc

@testable import TapDisk

/// The real daemon serving a 64 MiB sparse image on a 16 MiB loop-mounted ext4, with a control
/// connection subscribed to its events and a frontend attached (the attach's `running` event is
/// consumed): the fixture of the real-ENOSPC daemon suites. `prepare` shapes the filesystem
/// before the daemon starts (fill it, add other tenants' files). Nothing leaks when a step fails
/// or when the rig goes away: `teardown` (also `deinit`) kills the daemon and unmounts.
class ENOSPCDaemonRig {
    let fs: LoopFilesystem
    let image: String
    let daemon: DaemonProcess
    let watcher: ControlClient
    let driver: DiskDriver

    init(arguments: [String], pageOrder: Int, dataPages: Int, prepare: (LoopFilesystem) throws -> Void) throws {
        fs = try LoopFilesystem(sizeMiB: 16)
        do {
            try prepare(fs)
            image = try RealENOSPCTests.makeSparseImage(fs.path("disk.img"), bytes: 64 << 20)
            fs.syncDirectory()
            daemon = try DaemonProcess(image: image, arguments: arguments)
        } catch {
            fs.cleanup()
            throw error
        }
        do {
            watcher = try daemon.client()
            try watcher.call("subscribe")
            driver = try DiskDriver(socketPath: daemon.socketPath, pageOrder: pageOrder, dataPages: dataPages)
            let attached = try DaemonTest.nextEvent(watcher, named: "state-changed")
            guard attached?["state"] == .string("running") else {
                throw DaemonProcess.Failure("no running event: \(String(describing: attached))")
            }
        } catch {
            daemon.forceStop()
            fs.cleanup()
            throw error
        }
    }

    /// Stops the daemon and unmounts.
    func teardown() {
        daemon.forceStop()
        fs.cleanup()
    }

    deinit { teardown() }
}
