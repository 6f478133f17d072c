import Logging

/// Noticing that the image changed size while served: the new size is what is served, and
/// nothing beyond a shrunk end is ever written (docs/protocol.md §7, `image-resized`).
extension Daemon {
    /// Called when the image watch reports a change, and from the timer while it is quiet or
    /// absent (Daemon+Wakeups.swift): compares the image's size with the served geometry. On a
    /// change the engine serves the new size (`Engine.updateGeometry`), `info` reports it, an
    /// `image-resized` event goes to subscribers and the log says so: a warning for a shrink,
    /// because data beyond the new end is gone and the guest may still think it is there.
    func checkImageSize() {
        guard let now = engine.image.currentSectors() else { return }
        let old = engine.geometry.sectors
        guard now != old else { return }
        engine.updateGeometry(sectors: now)
        let metadata: Logger.Metadata = [
            "image": "\(config.imagePath)", "old-sectors": "\(old)", "new-sectors": "\(now)",
        ]
        if now < old {
            logger.warning("image shrank: requests beyond the new end are answered ERROR", metadata: metadata)
        } else {
            logger.notice("image grew: the new size is served", metadata: metadata)
        }
        broadcast(
            event: "image-resized",
            ["old-sectors": .uint(old), "new-sectors": .uint(now), "shrunk": .bool(now < old)])
    }
}
