/// Which front the engine serves. A closed enum, so no existential and no witness table sit on
/// the per-request path. The engine switches on it in four places, all in Engine.swift:
/// `consumeRequests`, `frontHasRequests` (the re-check before sleeping), `pushResponses` and
/// `finish` (the answer); `finishDetach` tests it to know what to tear down. The I/O core
/// between `begin` and `finish` does not look at it, but the engine still holds both fronts'
/// state, and `finish` takes a `BlkifStatus` that the virtio front translates.
package enum EngineFront: Equatable {
    case none
    /// The blkif shared-memory ring (docs/protocol.md), attached over the control socket.
    case blkif
    /// A vhost-user-blk virtqueue (docs/vhost-user.md), set up over the vhost-user socket.
    case virtio
    case nbd(NBDTransmission)

    package static func == (a: Self, b: Self) -> Bool {
        switch (a, b) {
        case (.none, .none), (.blkif, .blkif), (.virtio, .virtio), (.nbd, .nbd): true
        default: false
        }
    }

    package var name: String {
        switch self {
        case .none: "none"
        case .blkif: "blkif"
        case .virtio: "vhost-user-blk"
        case .nbd: "nbd"
        }
    }
}
