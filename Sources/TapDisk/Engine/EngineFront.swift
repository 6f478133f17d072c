/// Which front the engine serves. A closed enum, so no existential and no witness table sit on
/// the per-request path: each switch below is a jump on one byte to a direct call.
///
/// It is a plain tag, not the holder of each front's state. Each front's state is one stored
/// struct of `Engine` (`blkif: BlkifFront`, `virtio: VirtioFront`). As enum payloads they would
/// have to be mutated in place on every request (a ring index, a virtqueue's last-seen index),
/// and Swift mutates an enum payload by taking it out of the enum and putting it back: a copy of
/// the struct per access, and for `VhostUserDevice` (~Copyable, with arrays and guest memory
/// inside) a consuming switch that the hot path cannot afford. A stored property is modified in
/// place, and `@exclusivity(unchecked)` keeps the access free. The cost is one idle struct per
/// front that is not attached.
///
/// The core touches a front only in these switches, each case one call into the front's folder:
/// - `Engine.consumeRequests` (Engine.swift): `consumeRing()` / `consumeVirtqueue()`
/// - `Engine.frontHasRequests(arm:)` (Engine.swift): `ringHasRequests(arm:)` / `virtqueueHasRequests(arm:)`
/// - `Engine.pushResponses` (Engine.swift): `pushRing()` / `notifyVirtqueue()`
/// - `Engine.finish` (Engine.swift): `answerRing(_:_:)` / `answerChain(_:_:)`, with the record and
///   its `Completion`
/// - `Engine.finishDetach` (Engine+Lifecycle.swift): `detachRing()` / `detachVirtqueue()`, which
///   drop the front's state and return the `req-cons` to report
///
/// A new front adds, in the core, exactly:
/// 1. a case here, and its `name` (below);
/// 2. its state: one stored property in Engine.swift, `@exclusivity(unchecked) var nbd = NBDFront()`;
/// 3. one line per switch above (five lines: consume, has-requests, push, answer, detach);
/// 4. if it keeps its own bound on the disk's size for validation, one line in
///    `Engine.updateGeometry` (Engine+Resize.swift), as `blkif` and `virtio` do.
/// Everything else (its attach, parsing, validation, answer path) lives in its own folder and
/// reaches the core through `begin(_:_:)` with a `RequestRecord` (the front's `id` and `tag`),
/// `countRequest`, `countResponse`, `answerAtConsumption` and `table`.
package enum EngineFront: UInt8, Sendable {
    case none
    /// The blkif shared-memory ring (docs/protocol.md), attached over the control socket.
    case blkif
    /// A vhost-user-blk virtqueue (docs/vhost-user.md), set up over the vhost-user socket.
    case virtio
    /// NBD clients (docs/nbd.md), connected to the `--nbd` socket.
    case nbd

    package var name: String {
        switch self {
        case .none: "none"
        case .blkif: "blkif"
        case .virtio: "vhost-user-blk"
        case .nbd: "nbd"
        }
    }
}
