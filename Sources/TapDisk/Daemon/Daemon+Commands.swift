import Glibc

/// The §2.2 commands. Each either replies at once or leaves a `Deferred` reply on the connection
/// that `finishWakeup` sends when the engine reaches the state it waits for.
extension Daemon {
    func handle(_ request: ControlRequest, from connection: ControlConnection, fds: [Int32], controlTruncated: Bool) {
        let tag = request.tag
        do throws(ControlError) {
            switch request.command {
            case "info":
                reply(connection, ControlReply.ok(fields: info(), tag: tag))
            case "attach":
                try attach(request, from: connection, fds: fds, controlTruncated: controlTruncated)
            case "detach":
                try detach(tag: tag, from: connection)
            case "status":
                reply(connection, ControlReply.ok(fields: status(), tag: tag))
            case "stats":
                reply(
                    connection,
                    ControlReply.ok(fields: ["counters": .object(stats()), "latency": .object(latency())], tag: tag))
            case "pause":
                try pause(tag: tag, from: connection)
            case "resume":
                let failHeld = try request.bool("fail-held") ?? false
                try requireAttached()
                guard engine.state.isPaused else {
                    throw .wrongState("resume: the disk is \(engine.state.name), not paused")
                }
                let r = engine.resume(failHeld: failHeld)
                logger.notice(
                    "resumed",
                    metadata: [
                        "image": "\(config.imagePath)", "resubmitted": "\(r.resubmitted)", "failed": "\(r.failed)",
                    ])
                reply(
                    connection,
                    ControlReply.ok(
                        fields: ["resubmitted": .integer(r.resubmitted), "failed": .integer(r.failed)], tag: tag))
            case "set-limits":
                reply(connection, ControlReply.ok(fields: try setLimits(request), tag: tag))
            case "subscribe":
                connection.subscribed = true
                reply(connection, ControlReply.ok(tag: tag))
            default:
                throw .unknownCommand("unknown command \(request.command)")
            }
        } catch {
            reply(connection, ControlReply.error(error, tag: tag))
        }
    }

    private func requireAttached() throws(ControlError) {
        guard engine.isAttached else { throw .notAttached("no frontend is attached") }
    }

    func info() -> JSONObject {
        let g = engine.geometry
        return [
            "protocol": 1,
            "image": .string(config.imagePath),
            "sectors": .uint(g.sectors),
            "sector-size": .uint(UInt64(g.sectorSize)),
            "physical-sector-size": .uint(UInt64(g.physicalSectorSize)),
            "readonly": .bool(config.readOnly),
            "features": .object([
                "flush": true, "barrier": true, "discard": .bool(g.discard),
                "discard-granularity": .uint(UInt64(g.discardGranularity)),
                "indirect-segments": .integer(RingLayout.maxIndirectSegments),
            ]),
            "max-ring-page-order": .integer(config.maxRingPageOrder),
            "nbd": nbdInfo(),
            "state": .string(engine.state.name),
        ]
    }

    func status() -> JSONObject {
        let space: JSONObject
        if let s = engine.image.filesystemSpace() {
            space = [
                "apparent-bytes": .uint(s.apparentBytes), "allocated-bytes": .uint(s.allocatedBytes),
                "fs-free-bytes": .uint(s.freeBytes), "overcommit-bytes": .uint(s.overcommitBytes),
            ]
        } else {
            space = [
                "apparent-bytes": .null, "allocated-bytes": .null, "fs-free-bytes": .null, "overcommit-bytes": .null,
            ]
        }
        return [
            "state": .string(engine.state.name),
            "reason": engine.state.reason.map { .string($0) } ?? .null,
            "io-status": .string(engine.ioStatus.rawValue),
            "in-flight": .integer(engine.inFlight),
            "held": .integer(engine.held),
            "attached": .bool(engine.isAttached),
            "front": engine.isAttached ? .string(engine.front.name) : .null,
            "limits": .object(Self.limitsObject(engine.throttle.limits)),
            "throttled": .bool(engine.isThrottled),
            "limits-effective-us": limitsEffectiveMicroseconds.map { .uint($0) } ?? .null,
            "image-space": .object(space),
            "nbd": nbdStatus(),
            "uptime-seconds": .double((uptimeSeconds * 1000).rounded() / 1000),
        ]
    }

    func stats() -> JSONObject {
        var counters = JSONObject()
        for (name, value) in engine.counters.named { counters.set(name, .uint(value)) }
        var reasons = JSONObject()
        for r in Rejection.allCases { reasons.set(r.rawValue, .uint(engine.counters.rejections[r])) }
        counters.set("rejections", .object(reasons))
        var byErrno = JSONObject()
        for (name, value) in engine.counters.errnoErrors.named { byErrno.set(name, .uint(value)) }
        counters.set("errors-by-errno", .object(byErrno))
        counters.set("control-connections-refused", .uint(admission.refusedOverLimit + admission.refusedNoDescriptors))
        counters.set("fd-exhaustion-episodes", .uint(admission.exhaustionEpisodes))
        counters.set("poll-microseconds", .uint(loop.polledNanos / 1000))
        counters.set("poll-hits", .uint(loop.pollHits))
        counters.set("poll-misses", .uint(loop.pollMisses))
        let now = MonotonicClock.nanoseconds()
        var paused = JSONObject()
        for reason in [PauseReason.operatorRequest, .nospace, .ioError] {
            let ns = engine.pausedTime.nanoseconds(reason, now: now)
            paused.set(reason.rawValue, .double(Double(ns / 1000) / 1e6))
        }
        counters.set("paused-seconds", .object(paused))
        counters.set("throttled-seconds", .double(Double(engine.throttle.throttledNanos(now: now) / 1000) / 1e6))
        counters.set("throttle-delayed-requests", .uint(engine.throttle.delayedRequests))
        return counters
    }

    /// The latency histograms (docs/protocol.md §2.2): the shared bucket bounds, then one
    /// object per operation. Taken in the same turn of the loop as `stats()`, so each `count`
    /// plus what is in flight or held of that operation matches its `*-requests` counter.
    func latency() -> JSONObject {
        var latency: JSONObject = ["bounds-ns": .array(LatencyHistograms.boundsNanos.map { .uint($0) })]
        for operation in LatencyHistograms.Operation.allCases {
            let h = engine.latencySnapshot(operation)
            latency.set(
                operation.name,
                .object([
                    "count": .uint(h.count), "sum-ns": .uint(h.sumNanos),
                    "buckets": .array(h.buckets.map { .uint($0) }),
                ]))
        }
        return latency
    }

    private func attach(
        _ request: ControlRequest, from connection: ControlConnection, fds: [Int32], controlTruncated: Bool
    ) throws(ControlError) {
        let parsed = try AttachRequest(request)
        guard vhostListenerFD < 0 else {
            throw .busy("this daemon serves its disk to a vhost-user-blk front-end (--vhost-user-blk)")
        }
        guard !engine.isAttached else { throw .busy("a frontend is already attached") }
        let attachment = try parsed.validate(
            fds: fds, controlTruncated: controlTruncated, maxRingPageOrder: config.maxRingPageOrder)
        let (pageOrder, dataPages) = (attachment.pageOrder, attachment.dataPages)
        do {
            try engine.attach(attachment)
        } catch {
            switch error {
            case .ringState: throw .invalidArgument("req_prod - rsp_prod exceeds ring-entries")
            case .alreadyAttached: throw .busy("a frontend is already attached")
            case .ringOrderTooLarge: throw .invalidArgument("ring-page-order too large")
            }
        }
        owner = connection.token
        logger.info(
            "attached",
            metadata: [
                "image": "\(config.imagePath)", "ring-page-order": "\(pageOrder)",
                "data-pages": "\(dataPages)",
            ])
        var fields = info()
        fields.set("ring-entries", .uint(UInt64(engine.ringEntries)))
        reply(connection, ControlReply.ok(fields: fields, tag: request.tag))
    }

    private func detach(tag: JSONValue?, from connection: ControlConnection) throws(ControlError) {
        try requireAttached()
        guard engine.state != .closing else { throw .wrongState("a detach is already in progress") }
        connection.deferred = .detach(tag: tag, responsesAtStart: engine.counters.responses)
        engine.beginDetach()
    }

    private func pause(tag: JSONValue?, from connection: ControlConnection) throws(ControlError) {
        try requireAttached()
        switch engine.state {
        case .closing: throw .wrongState("the disk is closing")
        case .halted: throw .wrongState("the disk is halted (frontend violation)")
        default: break
        }
        engine.pause()
        connection.deferred = .pause(tag: tag)
    }

    // MARK: - Owed replies: `pause` once quiescent, `detach` once drained

    /// Sends the owed replies whose condition holds now; true when it sent any (sending one
    /// resumes reading that connection, which may owe a new one at once).
    func answerOwedReplies() -> Bool {
        var progressed = false
        if engine.state == .closing && engine.isDrained {
            completeDetach()
            progressed = true
        }
        for connection in connections.values {
            if case .pause(let tag) = connection.deferred, engine.isQuiescent {
                connection.deferred = nil
                reply(connection, ControlReply.ok(tag: tag))
                readRequests(connection)
                progressed = true
            }
        }
        return progressed
    }

    /// An owed reply could be sent now (finishWakeup ran out of rounds): the loop must not sleep.
    var owedRepliesAreDue: Bool {
        (engine.state == .closing && engine.isDrained)
            || connections.values.contains { c in
                if case .pause = c.deferred { return engine.isQuiescent }
                return false
            }
    }

    func completeDetach() {
        let responsesBefore: UInt64? = connections.values.lazy.compactMap { c -> UInt64? in
            if case .detach(_, let start) = c.deferred { return start }
            return nil
        }.first
        let completedBase = responsesBefore ?? engine.counters.responses
        let front = engine.front
        let reqCons = loop.finishDetach()
        owner = nil
        if vhostListenerFD >= 0 { vhostUserDetached() }
        let completed = engine.counters.responses - completedBase
        for connection in connections.values {
            guard case .detach(let tag, _) = connection.deferred else { continue }
            connection.deferred = nil
            reply(
                connection,
                ControlReply.ok(fields: ["completed": .uint(completed), "req-cons": .uint(UInt64(reqCons))], tag: tag))
            readRequests(connection)
        }
        logger.info(
            "detached",
            metadata: ["image": "\(config.imagePath)", "front": "\(front.name)"].merging(
                front == .blkif ? ["req-cons": "\(reqCons)"] : [:], uniquingKeysWith: { a, _ in a }))
    }
}
