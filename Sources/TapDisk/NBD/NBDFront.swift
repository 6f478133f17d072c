/// The engine's state for the NBD front, one stored property of `Engine` (`nbd`): the
/// transmission phase of every connected client, set by `attachNBD` and dropped by
/// `finishDetach`. The transmission itself is allocated once by the daemon and outlives
/// attaches (its buffer pool is the daemon's for its whole life); the engine only points at it
/// while NBD is the attached front.
struct NBDFront {
    var transmission: NBDTransmission? = nil

    init() {}
}
