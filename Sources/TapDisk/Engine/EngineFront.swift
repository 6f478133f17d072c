/// Which front the engine serves. A closed enum the engine switches on at its three front
/// points (consume, answer, push): no existential and no witness table on the per-request path,
/// and the I/O core between those points never looks at it.
package enum EngineFront: UInt8, Sendable {
    case none
    /// The blkif shared-memory ring (docs/protocol.md), attached over the control socket.
    case blkif
    /// A vhost-user-blk virtqueue (docs/vhost-user.md), set up over the vhost-user socket.
    case virtio

    package var name: String {
        switch self {
        case .none: "none"
        case .blkif: "blkif"
        case .virtio: "vhost-user-blk"
        }
    }
}
