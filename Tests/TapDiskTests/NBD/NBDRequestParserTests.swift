import Testing

@testable import TapDisk

/// Every request a client can send, and the reply or disconnect the spec names for it.
@Suite struct NBDRequestParserTests {
    static let export = NBDExport(name: "disk", size: 1 << 20, minimumBlockSize: 512, readOnly: false)

    static func parser(
        export: NBDExport = export, structured: Bool = true, context: Bool = true
    ) -> NBDRequestParser {
        NBDRequestParser(
            export: export,
            session: NBDSession(
                structuredReplies: structured, allocationContext: structured && context ? 1 : nil,
                transmissionFlags: export.transmissionFlags(structuredReplies: structured), agreedBlockSize: true,
                exportName: ""))
    }

    static func header(
        _ command: NBDCommand, _ offset: UInt64, _ length: UInt32, flags: NBDCommandFlags = [], cookie: UInt64 = 7
    ) -> NBDRequestHeader {
        NBDRequestHeader(flags: flags, type: command.rawValue, cookie: cookie, offset: offset, length: length)
    }

    func decide(_ h: NBDRequestHeader, _ p: NBDRequestParser = parser()) -> NBDRequestDecision { p.decide(h) }

    @Test func headerDecodesBigEndianFromItsWireForm() {
        let h = NBDRequestHeader(
            flags: [.fua, .noHole], type: 6, cookie: 0x0102_0304_0506_0708, offset: 0x1122_3344_5566_7788,
            length: 0xdead_beef)
        var bytes: [UInt8] = []
        h.append(to: &bytes)
        #expect(bytes.count == NBDRequestHeader.byteCount)
        #expect(Array(bytes.prefix(8)) == [0x25, 0x60, 0x95, 0x13, 0, 3, 0, 6])
        #expect(bytes.withUnsafeBytes { NBDRequestHeader(bytes: $0) } == h)
    }

    @Test func validRequestsExecute() {
        let read = Self.header(.read, 4096, 8192, flags: .dontFragment)
        #expect(
            decide(read)
                == .execute(NBDRequest(command: .read, flags: .dontFragment, cookie: 7, offset: 4096, length: 8192)))
        for h in [
            Self.header(.write, 0, 512, flags: .fua), Self.header(.trim, 512, 1024),
            Self.header(.writeZeroes, 0, 1 << 20, flags: [.noHole, .fastZero]),
            Self.header(.blockStatus, 0, 1 << 20, flags: .requestOne), Self.header(.cache, 0, 4096),
            Self.header(.flush, 0, 0), Self.header(.read, 0, 0),
        ] {
            guard case .execute(let r) = decide(h) else {
                Issue.record("\(h) not executed")
                continue
            }
            #expect(r.cookie == 7 && r.offset == h.offset && r.length == h.length)
        }
    }

    @Test func badMagicIsAViolationAndDiscIsADisconnect() {
        var h = Self.header(.read, 0, 512)
        h.magic = 0x1256_0953
        #expect(decide(h) == .violation(.badMagic(0x1256_0953)))
        #expect(decide(Self.header(.disconnect, 0, 0)) == .disconnect)
    }

    @Test func aWriteLongerThanTheMaximumIsAViolationButAReadIsEINVAL() {
        #expect(decide(Self.header(.write, 0, (32 << 20) + 512)) == .violation(.payloadTooLarge((32 << 20) + 512)))
        let big = NBDExport(name: "", size: 1 << 30, minimumBlockSize: 512, readOnly: false)
        #expect(
            decide(Self.header(.read, 0, (32 << 20) + 512), Self.parser(export: big))
                == .refuse(cookie: 7, error: .invalid))
        guard case .execute = decide(Self.header(.write, 0, 32 << 20), Self.parser(export: big)) else {
            Issue.record("a 32 MiB write is allowed")
            return
        }
        // Trim and write-zeroes carry no payload: longer effect lengths are fine.
        guard case .execute = decide(Self.header(.writeZeroes, 0, 1 << 29), Self.parser(export: big)) else {
            Issue.record("a 512 MiB write-zeroes is allowed")
            return
        }
    }

    @Test func unknownCommandsAndUndocumentedFlagsAreEINVAL() {
        #expect(
            decide(NBDRequestHeader(type: 8, cookie: 1, offset: 0, length: 0)) == .refuse(cookie: 1, error: .invalid))
        #expect(
            decide(NBDRequestHeader(type: 0xffff, cookie: 2, offset: 0, length: 0))
                == .refuse(cookie: 2, error: .invalid))
        #expect(decide(Self.header(.write, 0, 512, flags: .noHole)) == .refuse(cookie: 7, error: .invalid))
        #expect(decide(Self.header(.read, 0, 512, flags: .requestOne)) == .refuse(cookie: 7, error: .invalid))
        #expect(
            decide(Self.header(.read, 0, 512, flags: NBDCommandFlags(rawValue: 0x40)))
                == .refuse(cookie: 7, error: .invalid))
        // DF needs structured replies (the flag is not advertised without them).
        #expect(
            decide(Self.header(.read, 0, 512, flags: .dontFragment), Self.parser(structured: false))
                == .refuse(cookie: 7, error: .invalid))
    }

    @Test func outOfRangeIsENOSPCForWritesAndEINVALOtherwise() {
        let end = Self.export.size
        #expect(decide(Self.header(.write, end - 512, 1024)) == .refuse(cookie: 7, error: .noSpace))
        #expect(decide(Self.header(.writeZeroes, end, 512)) == .refuse(cookie: 7, error: .noSpace))
        #expect(decide(Self.header(.read, end, 512)) == .refuse(cookie: 7, error: .invalid))
        #expect(decide(Self.header(.trim, end - 512, 1024)) == .refuse(cookie: 7, error: .invalid))
        #expect(decide(Self.header(.blockStatus, end, 512)) == .refuse(cookie: 7, error: .invalid))
        #expect(decide(Self.header(.cache, end, 512)) == .refuse(cookie: 7, error: .invalid))
        // offset + length overflowing 64 bits is out of range, not a wrap to the start.
        #expect(decide(Self.header(.read, UInt64.max - 511, 1024)) == .refuse(cookie: 7, error: .invalid))
    }

    @Test func misalignedIsEINVAL() {
        #expect(decide(Self.header(.read, 1, 512)) == .refuse(cookie: 7, error: .invalid))
        #expect(decide(Self.header(.write, 0, 513)) == .refuse(cookie: 7, error: .invalid))
        let e4k = NBDExport(name: "", size: 1 << 20, minimumBlockSize: 4096, readOnly: false)
        #expect(decide(Self.header(.read, 512, 4096), Self.parser(export: e4k)) == .refuse(cookie: 7, error: .invalid))
    }

    @Test func readOnlyRefusesWritesWithEPERM() {
        let ro = Self.parser(export: NBDExport(name: "", size: 1 << 20, minimumBlockSize: 512, readOnly: true))
        for c in [NBDCommand.write, .trim, .writeZeroes] {
            #expect(decide(Self.header(c, 0, 512), ro) == .refuse(cookie: 7, error: .permission))
        }
        guard case .execute = decide(Self.header(.read, 0, 512), ro) else {
            Issue.record("read refused")
            return
        }
    }

    @Test func blockStatusNeedsANegotiatedContext() {
        #expect(
            decide(Self.header(.blockStatus, 0, 512), Self.parser(context: false))
                == .refuse(cookie: 7, error: .invalid))
        #expect(
            decide(Self.header(.blockStatus, 0, 512), Self.parser(structured: false))
                == .refuse(cookie: 7, error: .invalid))
    }

    @Test func payloadLengthFollowsTheRawTypeEvenWhenRefused() {
        #expect(Self.header(.write, 1, 4096).payloadLength == 4096)
        #expect(Self.header(.read, 0, 4096).payloadLength == 0)
        #expect(Self.header(.writeZeroes, 0, 4096).payloadLength == 0)
    }
}
