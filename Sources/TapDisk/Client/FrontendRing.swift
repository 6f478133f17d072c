import CLibAIO

/// The frontend's side of the blkif ring: produces requests, consumes responses.
///
/// The mirror image of `BackendRing` with the same Xen discipline, used by the project's client
/// library, tests, demo and benchmark. It trusts the daemon no more than the daemon trusts it:
/// a response count beyond what was requested is reported, never followed.
package struct FrontendRing {
    package let header: RingHeader
    package let entries: UInt32
    package private(set) var reqProdPvt: UInt32
    package private(set) var rspCons: UInt32
    private var reqProdPublished: UInt32

    /// Attaches to a ring whose header is already laid out (e.g. by `initialize`).
    package init(base: UnsafeMutableRawPointer, pageOrder: Int) {
        header = RingHeader(base: base)
        entries = RingLayout.entries(pageOrder: pageOrder)
        let prod = header.loadRelaxed(RingLayout.reqProdOffset)
        reqProdPvt = prod
        reqProdPublished = prod
        rspCons = header.loadRelaxed(RingLayout.rspProdOffset)
    }

    /// Lays out a fresh ring per §3: zero, then `req_prod = rsp_prod = X`,
    /// `req_event = rsp_event = X + 1`.
    package static func initialize(base: UnsafeMutableRawPointer, pageOrder: Int, startIndex: UInt32 = 0) {
        base.initializeMemory(as: UInt8.self, repeating: 0, count: (1 << pageOrder) * RingLayout.pageSize)
        let h = RingHeader(base: base)
        h.storeRelaxed(RingLayout.reqProdOffset, startIndex)
        h.storeRelaxed(RingLayout.rspProdOffset, startIndex)
        h.storeRelaxed(RingLayout.reqEventOffset, startIndex &+ 1)
        h.storeRelaxed(RingLayout.rspEventOffset, startIndex &+ 1)
    }

    /// Slots a new request may use now (requests produced and not yet answered use the rest).
    package var freeRequests: UInt32 { entries &- (reqProdPvt &- rspCons) }

    /// Requests published and not yet answered.
    package var outstanding: UInt32 { reqProdPvt &- rspCons }

    /// Writes a request into the next slot (not yet visible: see `pushRequests`).
    package mutating func produce(_ request: clibaio_blkif_request) {
        precondition(freeRequests > 0, "ring full")
        var copy = request
        let slot = header.base + RingLayout.slotOffset(index: reqProdPvt, entries: entries)
        withUnsafeBytes(of: &copy) { slot.copyMemory(from: $0.baseAddress!, byteCount: RingLayout.slotSize) }
        reqProdPvt &+= 1
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: true when the daemon must be kicked.
    package mutating func pushRequests() -> Bool {
        let old = reqProdPublished
        let new = reqProdPvt
        guard old != new else { return false }
        header.storeReleasing(RingLayout.reqProdOffset, new)
        reqProdPublished = new
        RingHeader.fullFence()
        let event = header.reqEvent
        return (new &- event) < (new &- old)
    }

    /// A response as read from the ring (copied once).
    package struct Response: Equatable, Sendable {
        package var id: UInt64
        package var operation: UInt8
        package var status: Int16
        /// Bytes 9 and 12..15 of the slot: the protocol says they are zero.
        package var paddingIsZero: Bool
    }

    package enum Next: Equatable {
        case none
        case response(Response)
        /// The daemon published more responses than requests outstanding.
        case violation
    }

    /// Consumes the next published response, if any.
    package mutating func nextResponse() -> Next {
        let prod = header.rspProd
        guard prod != rspCons else { return .none }
        if prod &- rspCons > reqProdPvt &- rspCons { return .violation }
        let slot = header.base + RingLayout.slotOffset(index: rspCons, entries: entries)
        var raw = clibaio_blkif_response()
        withUnsafeMutableBytes(of: &raw) { $0.copyMemory(from: UnsafeRawBufferPointer(start: slot, count: 16)) }
        rspCons &+= 1
        return .response(
            Response(
                id: raw.id, operation: raw.operation, status: raw.status, paddingIsZero: raw.pad0 == 0 && raw.pad1 == 0)
        )
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: arm `rsp_event`, fence, re-check.
    package mutating func finalCheckForResponses() -> Bool {
        if header.rspProd != rspCons { return true }
        header.storeReleasing(RingLayout.rspEventOffset, rspCons &+ 1)
        RingHeader.fullFence()
        return header.rspProd != rspCons
    }
}
