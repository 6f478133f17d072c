#if TAPDISK_FAULT_INJECTION
    import Glibc

    extension FaultInjector {
        /// Completion rules from text, so tests can inject faults into the real daemon process
        /// (debug builds read `TAPDISK_FAULTS`; release builds have no seam at all).
        ///
        /// The text is comma-separated rules `TARGET:FAULT[:COUNT[:SKIP]]`: TARGET is `read`,
        /// `write`, `sync` or `any`; FAULT is `short`, `zero`, an errno name (`EIO`, `ENOSPC`,
        /// `EDQUOT`, `EAGAIN`, `EINVAL`) or a positive errno number; COUNT is how many matching
        /// completions to rewrite (default 1, `*` for all); SKIP how many to let through first.
        /// `random:SEED[:KIND=PERMILLE…]` adds seeded random faults, KIND one of `eagain`,
        /// `partial`, `short`, `zero`, `eio`, `enospc`, `sync`.
        package init(specification: String) throws(Errno) {
            self.init()
            for text in specification.split(separator: ",") {
                let fields = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
                if fields[0] == "random" {
                    random = try Self.randomFaults(fields.dropFirst())
                    continue
                }
                guard (2...4).contains(fields.count) else { throw Errno(rawValue: EINVAL) }
                let target: Target
                switch fields[0] {
                case "read": target = .read
                case "write": target = .write
                case "sync": target = .sync
                case "any": target = .any
                default: throw Errno(rawValue: EINVAL)
                }
                let fault: CompletionFault
                switch fields[1] {
                case "short": fault = .short
                case "zero": fault = .zero
                default:
                    let named: [String: Int32] = [
                        "EIO": EIO, "ENOSPC": ENOSPC, "EDQUOT": EDQUOT, "EAGAIN": EAGAIN, "EINVAL": EINVAL,
                    ]
                    guard let e = named[fields[1]] ?? Int32(fields[1]), e > 0 else { throw Errno(rawValue: EINVAL) }
                    fault = .errno(e)
                }
                var count = 1
                if fields.count > 2 {
                    if fields[2] == "*" {
                        count = Int.max
                    } else {
                        guard let n = Int(fields[2]), n > 0 else { throw Errno(rawValue: EINVAL) }
                        count = n
                    }
                }
                var skip = 0
                if fields.count > 3 {
                    guard let n = Int(fields[3]), n >= 0 else { throw Errno(rawValue: EINVAL) }
                    skip = n
                }
                completionRules.append(CompletionRule(target: target, fault: fault, skip: skip, count: count))
            }
        }

        private static func randomFaults(_ fields: ArraySlice<String>) throws(Errno) -> RandomFaults {
            guard let seedText = fields.first, let seed = UInt64(seedText) else { throw Errno(rawValue: EINVAL) }
            var faults = RandomFaults(seed: seed)
            for field in fields.dropFirst() {
                let pair = field.split(separator: "=").map(String.init)
                guard pair.count == 2, let perMille = Int(pair[1]), (0...1000).contains(perMille) else {
                    throw Errno(rawValue: EINVAL)
                }
                switch pair[0] {
                case "eagain": faults.submitEagainPerMille = perMille
                case "partial": faults.submitPartialPerMille = perMille
                case "short": faults.shortPerMille = perMille
                case "zero": faults.zeroPerMille = perMille
                case "eio": faults.eioPerMille = perMille
                case "enospc": faults.enospcPerMille = perMille
                case "sync": faults.syncFailPerMille = perMille
                default: throw Errno(rawValue: EINVAL)
                }
            }
            return faults
        }
    }
#endif
