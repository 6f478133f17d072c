/// `set-limits` (docs/protocol.md §9): per-disk QoS changed live, and the limits as `status`
/// reports them.
extension Daemon {
    /// Replaces the disk's limits with the request's `limits` object (QEMU's keys, integer
    /// values; `{}` removes every limit). Absent keys are unlimited, as in
    /// `block_set_io_throttle`. Allowed in every state: a limit set while idle applies to the
    /// next frontend. Replies with the limits now in force.
    func setLimits(_ request: ControlRequest) throws(ControlError) -> JSONObject {
        guard let value = request.arguments["limits"] else { throw .badRequest("missing \"limits\"") }
        guard case .object(let object) = value else { throw .badRequest("\"limits\" must be an object") }
        var pairs: [(String, UInt64)] = []
        for member in object {
            guard case .number(let number) = member.value, number.isInteger else {
                throw .badRequest("\"limits\".\"\(member.key)\" must be an integer")
            }
            guard let v = number.uint64 else {
                throw .invalidArgument("\"limits\".\"\(member.key)\" must be in 0...\(ThrottleLimits.maxValue)")
            }
            pairs.append((member.key, v))
        }
        let limits: ThrottleLimits
        do {
            limits = try ThrottleLimits.build(pairs)
        } catch {
            throw .invalidArgument(error.message)
        }
        engine.setLimits(limits)
        logger.notice("limits set", metadata: ["image": "\(config.imagePath)", "limits": "\(limits.text)"])
        return ["limits": .object(Self.limitsObject(limits))]
    }

    /// Microseconds from the last change of the limits (`--limit` at start counts) to the first
    /// request consumed after it, nil until one is: how long a new limit took to apply, as the
    /// daemon saw it (`status`' `limits-effective-us`). Requests already waiting are consumed in
    /// the `set-limits` call itself; otherwise this includes the wait for the next request.
    var limitsEffectiveMicroseconds: UInt64? {
        let t = engine.throttle
        guard t.firstConsumptionAfterConfigure != 0 else { return nil }
        return (max(t.firstConsumptionAfterConfigure, t.configuredAt) - t.configuredAt) / 1000
    }

    /// The limits in force as `{"iops-total":200,...}`: only those set, `{}` for none.
    static func limitsObject(_ limits: ThrottleLimits) -> JSONObject {
        var object = JSONObject()
        for (key, value) in limits.pairs { object.set(key, .uint(value)) }
        return object
    }
}
