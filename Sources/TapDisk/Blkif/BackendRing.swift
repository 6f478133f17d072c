import CLibAIO

/// The daemon's side of the blkif ring: consumes requests, produces responses (§4.2).
///
/// Holds only indices private to the daemon; nothing read from shared memory is kept except
/// through `consume(into:)`, which copies a slot once into private memory
/// (`clibaio_blkif_copy_request`; Xen XSA-155).
package struct BackendRing {
    package let header: RingHeader
    package let entries: UInt32
    /// Next request index to consume.
    package private(set) var reqCons: UInt32
    /// Next response index to write; responses become visible at `pushResponses`.
    package private(set) var rspProdPvt: UInt32
    /// The value last published to `rsp_prod` (the daemon is its only writer).
    private var rspProdPublished: UInt32

    /// What `pendingRequests` found on the ring.
    package enum Pending: Equatable {
        case requests(UInt32)
        /// `req_prod` claims more requests than can exist: the frontend is buggy or hostile.
        case violation(reqProd: UInt32)
    }

    /// Takes over a ring the frontend prepared: `req_cons = rsp_prod_pvt = rsp_prod` (§3).
    package init(base: UnsafeMutableRawPointer, pageOrder: Int) {
        header = RingHeader(base: base)
        entries = RingLayout.entries(pageOrder: pageOrder)
        let rspProd = header.rspProd
        reqCons = rspProd
        rspProdPvt = rspProd
        rspProdPublished = rspProd
    }

    /// Unconsumed requests, or a violation when `req_prod` is impossible (§5.1): more than
    /// `entries` unanswered, or moved backwards past what was consumed.
    @inline(__always)
    package func pendingRequests() -> Pending {
        let prod = header.reqProd
        let unconsumed = prod &- reqCons
        let outstanding = reqCons &- rspProdPvt
        if prod &- rspProdPvt > entries || unconsumed > entries &- outstanding {
            return .violation(reqProd: prod)
        }
        return .requests(unconsumed)
    }

    /// Copies the next request slot into `request` and advances `req_cons`.
    @inline(__always)
    package mutating func consume(into request: inout clibaio_blkif_request) {
        let slot = header.base + RingLayout.slotOffset(index: reqCons, entries: entries)
        clibaio_blkif_copy_request(&request, slot)
        reqCons &+= 1
    }

    /// Writes one response into slot `rsp_prod_pvt` (not the request's slot: only `id` links
    /// them). The caller is the response builder; nothing else writes response bytes.
    @inline(__always)
    package mutating func writeResponse(id: UInt64, operation: UInt8, status: BlkifStatus) {
        let slot = header.base + RingLayout.slotOffset(index: rspProdPvt, entries: entries)
        clibaio_blkif_write_response(slot, id, operation, status.rawValue)
        rspProdPvt &+= 1
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publish with release order, full fence, then
    /// notify iff `rsp_event` lies in `(old, new]`.
    @inline(__always)
    package mutating func pushResponses() -> Bool {
        let old = rspProdPublished
        let new = rspProdPvt
        guard old != new else { return false }
        header.storeReleasing(RingLayout.rspProdOffset, new)
        rspProdPublished = new
        RingHeader.fullFence()
        let event = header.rspEvent
        return (new &- event) < (new &- old)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: arm `req_event = req_cons + 1`, fence, re-check, so a
    /// request published while we decided to sleep is never missed.
    @inline(__always)
    package mutating func finalCheckForRequests() -> Bool {
        if hasUnconsumedRequests { return true }
        header.storeReleasing(RingLayout.reqEventOffset, reqCons &+ 1)
        RingHeader.fullFence()
        return hasUnconsumedRequests
    }

    /// Xen's `RING_HAS_UNCONSUMED_REQUESTS`, bounded by the free response space.
    @inline(__always)
    package var hasUnconsumedRequests: Bool {
        let unconsumed = header.reqProd &- reqCons
        let room = entries &- (reqCons &- rspProdPvt)
        return min(unconsumed, room) != 0
    }
}
