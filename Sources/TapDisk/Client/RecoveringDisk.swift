import CLibAIO
import Glibc

/// A frontend that survives the daemon's death (PROTOCOL.md §2.3 "Recovery after the daemon
/// died"): it keeps a shadow of every request it has taken and not yet answered, and when the
/// owning connection hangs up it reconnects, attaches a fresh ring and resubmits the shadow in the
/// order the requests were first taken. Each request is answered exactly once to the caller.
///
/// The caller names its requests with its own tags (the `id` it puts in the request) and may
/// reuse a tag once it has been answered. On the ring a request carries a different id: its shadow
/// slot in the low 16 bits and a never-reused sequence number above. A response whose id does not
/// name a live shadow entry (a second answer) is dropped and counted in `droppedResponses`; the
/// sequence number makes such a match impossible even when a slot is reused.
///
/// Data pages: the caller reads and writes them through `page(_:)`, which always points into the
/// current ring's memfd. A recovery copies the whole data area of the old memfd into the new one
/// before resubmitting, so WRITE payloads and INDIRECT descriptor pages are resubmitted unchanged
/// (page numbers stay the same). Pointers from `page(_:)` are valid only until the next `wait`.
///
/// `enqueue`, `push`, `reap` and `wait` do not allocate while no recovery happens (the shadow is
/// preallocated, one entry per ring slot); a recovery allocates (new memfd, connection, sort).
package final class RecoveringDisk {
    /// One answer to the caller: its own tag, the operation echoed by the daemon, the status.
    package struct Completion {
        package var tag: UInt64
        package var operation: UInt8
        package var status: Int16
    }

    package enum Failure: Error, CustomStringConvertible {
        /// The daemon hung up and recovery is off.
        case hungUp
        /// No daemon accepted a fresh attach before the deadline; the last error.
        case reconnect(ControlClient.ClientError)
        /// The daemon published more responses than requests outstanding.
        case violation

        package var description: String {
            switch self {
            case .hungUp: "the daemon hung up"
            case .reconnect(let e): "could not reattach after the daemon died: \(e)"
            case .violation: "the daemon published more responses than requests outstanding"
            }
        }
    }

    package let socketPath: String
    package let pageOrder: Int
    package let dataPages: Int
    /// Whether a hang-up triggers recovery (otherwise `wait` throws `hungUp`).
    package let recovers: Bool
    /// How long one recovery may spend reconnecting (the supervisor restarts the daemon).
    package let reconnectNanos: UInt64
    package private(set) var disk: RemoteDisk
    package var frontend: BlockFrontend { disk.frontend }
    package var sectors: UInt64 { disk.sectors }

    /// Completed recoveries, requests resubmitted, and responses dropped as second answers.
    package private(set) var recoveries = 0
    package private(set) var resubmitted = 0
    package private(set) var droppedResponses = 0
    /// Per recovery: nanoseconds from the last answer before the death to the first after it.
    package private(set) var stalls: [UInt64] = []
    /// Reconnect attempts refused while the daemon was down, over all recoveries.
    package private(set) var reconnectAttempts = 0

    private let capacity: Int
    private let requests: UnsafeMutablePointer<clibaio_blkif_request>
    private let tags: UnsafeMutablePointer<UInt64>
    /// Sequence number per shadow slot; 0 = free.
    private let sequences: UnsafeMutablePointer<UInt64>
    private let freeSlots: UnsafeMutablePointer<Int>
    private var freeCount: Int
    private var nextSequence: UInt64 = 1
    private var lastAnswerNanos: UInt64 = 0
    private var stallPending = false

    /// Connects and attaches once; a failure here is the caller's (no supervisor has had a reason
    /// to restart anything yet).
    package init(
        socketPath: String, pageOrder: Int, dataPages: Int, recovers: Bool = true, reconnectSeconds: Double = 30
    ) throws(ControlClient.ClientError) {
        self.socketPath = socketPath
        self.pageOrder = pageOrder
        self.dataPages = dataPages
        self.recovers = recovers
        reconnectNanos = UInt64(reconnectSeconds * 1e9)
        disk = try RemoteDisk(socketPath: socketPath, pageOrder: pageOrder, dataPages: dataPages)
        capacity = Int(disk.frontend.entries)
        requests = .allocate(capacity: capacity)
        requests.initialize(repeating: clibaio_blkif_request(), count: capacity)
        tags = .allocate(capacity: capacity)
        tags.initialize(repeating: 0, count: capacity)
        sequences = .allocate(capacity: capacity)
        sequences.initialize(repeating: 0, count: capacity)
        freeSlots = .allocate(capacity: capacity)
        for i in 0..<capacity { freeSlots[i] = capacity - 1 - i }
        freeCount = capacity
        lastAnswerNanos = MonotonicClock.nanoseconds()
    }

    deinit {
        requests.deallocate()
        tags.deallocate()
        sequences.deallocate()
        freeSlots.deallocate()
    }

    /// Requests the caller may still enqueue (one shadow entry and one ring slot each).
    package var freeRequests: Int { freeCount }
    package var outstanding: Int { capacity - freeCount }

    /// Start of data page `gref` in the current ring's memfd.
    package func page(_ gref: UInt32) -> UnsafeMutableRawPointer { frontend.page(gref) }

    /// Takes a request whose `id` is the caller's tag; it is published at the next `push`.
    package func enqueue(_ request: clibaio_blkif_request) {
        precondition(freeCount > 0, "more requests than ring slots")
        freeCount -= 1
        let slot = freeSlots[freeCount]
        let sequence = nextSequence
        nextSequence &+= 1
        tags[slot] = request.id
        sequences[slot] = sequence
        var r = request
        r.id = sequence << 16 | UInt64(slot)
        requests[slot] = r
        frontend.enqueue(r)
    }

    package func push() { frontend.push() }

    /// Delivers every response on the current ring to `body`, once per request.
    package func reap(_ body: (Completion) -> Void) throws(Failure) {
        var now: UInt64 = 0
        let next = frontend.reap { r in
            let slot = Int(truncatingIfNeeded: r.id & 0xFFFF)
            guard slot < capacity, sequences[slot] != 0, sequences[slot] == r.id >> 16 else {
                droppedResponses += 1
                return
            }
            sequences[slot] = 0
            freeSlots[freeCount] = slot
            freeCount += 1
            if now == 0 { now = MonotonicClock.nanoseconds() }
            body(Completion(tag: tags[slot], operation: r.operation, status: r.status))
        }
        if now != 0 {
            if stallPending {
                stallPending = false
                stalls.append(now &- lastAnswerNanos)
            }
            lastAnswerNanos = now
        }
        if next == .violation { throw .violation }
    }

    /// Waits for responses (or the timeout). When the owning connection hangs up, recovers
    /// before returning (or throws `hungUp` when recovery is off).
    package func wait(timeoutMilliseconds: Int32) throws(Failure) {
        if disk.waitForResponses(timeoutMilliseconds: timeoutMilliseconds) { return }
        guard recovers else { throw .hungUp }
        try recover()
    }

    /// Reconnects, attaches a fresh ring, copies the data area over and resubmits the shadow in
    /// first-taken order. The old ring is never read again: a response the dead daemon wrote but
    /// did not push must not become a second answer.
    package func recover() throws(Failure) {
        let old = disk
        let deadline = MonotonicClock.nanoseconds() &+ reconnectNanos
        var fresh: RemoteDisk? = nil
        while fresh == nil {
            do {
                fresh = try RemoteDisk(socketPath: socketPath, pageOrder: pageOrder, dataPages: dataPages)
            } catch {
                reconnectAttempts += 1
                guard MonotonicClock.nanoseconds() < deadline else { throw .reconnect(error) }
                usleep(5_000)  // paces the attempts while the supervisor restarts the daemon
            }
        }
        disk = fresh!
        guard frontend.entries == old.frontend.entries else {
            // The shadow holds one entry per slot of the first ring; RemoteDisk checked the size.
            throw .reconnect(.malformed("ring-entries changed across recovery"))
        }
        memcpy(frontend.page(0), old.frontend.page(0), dataPages * RingLayout.pageSize)
        var live: [(sequence: UInt64, slot: Int)] = []
        for slot in 0..<capacity where sequences[slot] != 0 { live.append((sequences[slot], slot)) }
        live.sort { $0.sequence < $1.sequence }
        for entry in live { frontend.enqueue(requests[entry.slot]) }
        frontend.push()
        resubmitted += live.count
        recoveries += 1
        stallPending = !live.isEmpty
    }
}
