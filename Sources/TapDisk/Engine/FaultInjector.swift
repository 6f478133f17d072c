#if TAPDISK_FAULT_INJECTION
    import CLibAIO
    import Glibc

    /// Scripted and random faults for the AIO seam (debug builds only).
    ///
    /// Faults are applied to real I/O: a rewritten completion still did its I/O in the kernel, which
    /// is harmless because every injected outcome is one the engine must treat as "not all bytes
    /// transferred" or "failed", and a failed request's range is undefined by contract (§5.2).
    package struct FaultInjector {
        /// Which completions a rule applies to.
        package enum Target: Sendable, Equatable {
            case read, write, sync, any

            func matches(_ opcode: Int32) -> Bool {
                switch self {
                case .any: true
                case .read: opcode == clibaio_IO_CMD_PREADV
                case .write: opcode == clibaio_IO_CMD_PWRITEV
                case .sync: opcode == clibaio_IO_CMD_FDSYNC
                }
            }
        }

        /// What an intercepted completion reports instead of its real result.
        package enum CompletionFault: Sendable, Equatable {
            /// Half of what was transferred, rounded down to 512 bytes (at least 512 short).
            case short
            /// A completion of 0 bytes.
            case zero
            /// `-errno`.
            case errno(Int32)
        }

        package struct CompletionRule: Sendable {
            package var target: Target
            package var fault: CompletionFault
            /// Matching completions to let through untouched first.
            package var skip: Int
            /// How many matching completions to rewrite.
            package var count: Int

            package init(target: Target, fault: CompletionFault, skip: Int = 0, count: Int = 1) {
                self.target = target
                self.fault = fault
                self.skip = skip
                self.count = count
            }
        }

        /// Submission faults, consumed in order, one per `io_submit` call.
        package enum SubmitFault: Sendable, Equatable {
            /// The call accepts nothing and returns -EAGAIN.
            case eagain
            /// The call accepts at most this many iocbs.
            case partial(Int)
            /// The call rejects the first iocb with this errno.
            case errno(Int32)
        }

        /// Random faults with these per-mille probabilities (a property test's chaos).
        package struct RandomFaults: Sendable {
            package var seed: UInt64
            package var submitEagainPerMille = 0
            package var submitPartialPerMille = 0
            package var shortPerMille = 0
            package var zeroPerMille = 0
            package var eioPerMille = 0
            package var enospcPerMille = 0
            package var syncFailPerMille = 0

            package init(seed: UInt64) { self.seed = seed }
        }

        package var completionRules: [CompletionRule] = []
        package var submitFaults: [SubmitFault] = []
        package var random: RandomFaults? = nil
        /// What was injected, for tests to reconcile against counters.
        package private(set) var injectedShort = 0
        package private(set) var injectedZero = 0
        package private(set) var injectedErrno = 0
        package private(set) var injectedSubmitFaults = 0

        package init() {}

        private mutating func roll(_ perMille: Int) -> Bool {
            guard perMille > 0, random != nil else { return false }
            // splitmix64: deterministic per seed, no global state.
            random!.seed &+= 0x9E37_79B9_7F4A_7C15
            var z = random!.seed
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            return Int(z % 1000) < perMille
        }

        /// nil: submit normally. Otherwise a result to return (≤ 0) or a reduced count to submit.
        mutating func interceptSubmit(count: Int) -> Int32? {
            if !submitFaults.isEmpty {
                injectedSubmitFaults += 1
                switch submitFaults.removeFirst() {
                case .eagain: return -EAGAIN
                case .errno(let e): return -e
                case .partial(let k): return Int32(max(0, min(k, count)))
                }
            }
            guard let r = random else { return nil }
            if roll(r.submitEagainPerMille) {
                injectedSubmitFaults += 1
                return -EAGAIN
            }
            if count > 1, roll(r.submitPartialPerMille) {
                injectedSubmitFaults += 1
                return Int32(count / 2)
            }
            return nil
        }

        mutating func interceptCompletion(_ event: inout io_event) {
            let opcode = clibaio_event_opcode(&event)
            let res = clibaio_event_res(&event)
            for i in completionRules.indices
            where completionRules[i].count > 0 && completionRules[i].target.matches(opcode) {
                if completionRules[i].skip > 0 {
                    completionRules[i].skip -= 1
                    continue
                }
                completionRules[i].count -= 1
                apply(completionRules[i].fault, to: &event, res: res)
                return
            }
            guard let r = random else { return }
            if opcode == clibaio_IO_CMD_FDSYNC {
                if roll(r.syncFailPerMille) { apply(.errno(EIO), to: &event, res: res) }
                return
            }
            if roll(r.eioPerMille) {
                apply(.errno(EIO), to: &event, res: res)
            } else if roll(r.enospcPerMille) {
                apply(.errno(ENOSPC), to: &event, res: res)
            } else if roll(r.zeroPerMille) {
                apply(.zero, to: &event, res: res)
            } else if roll(r.shortPerMille) {
                apply(.short, to: &event, res: res)
            }
        }

        private mutating func apply(_ fault: CompletionFault, to event: inout io_event, res: Int64) {
            switch fault {
            case .short:
                guard res > 512 else { return }
                injectedShort += 1
                clibaio_event_set_res(&event, max(512, (res / 2) & ~511))
            case .zero:
                guard res > 0 else { return }
                injectedZero += 1
                clibaio_event_set_res(&event, 0)
            case .errno(let e):
                injectedErrno += 1
                clibaio_event_set_res(&event, -Int64(e))
            }
        }

        /// Faults for the synchronous DISCARD path (fallocate), consumed in order.
        package var discardErrnos: [Int32] = []

        mutating func interceptDiscard() -> Int32? {
            discardErrnos.isEmpty ? nil : discardErrnos.removeFirst()
        }
    }
#endif
