/// The image changed size underneath the daemon (someone truncated or extended the file, or
/// resized the logical volume): the disk the frontend sees follows it.
extension Engine {
    /// Serves `sectors` from now on: `info` reports it and the request validators bound every
    /// request consumed from now on by it, so after a shrink a request beyond the new end is
    /// answered ERROR without I/O instead of extending the file again. Requests already in flight
    /// were checked against the old size and finish as the kernel lets them.
    package func updateGeometry(sectors: UInt64) {
        geometry.sectors = sectors
        // Each front that keeps its own bound for validation takes the new size (one line per
        // front; a front that judges requests against `geometry` needs none).
        blkif.updateGeometry(sectors: sectors)
        virtio.updateGeometry(sectors: sectors)
    }
}
