import Testing

@testable import TapDisk

/// The fixed-newstyle handshake, byte for byte against doc/proto.md: what each option answers,
/// what ends the connection, and the bounds a hostile client runs into.
@Suite struct NBDHandshakeTests {
    typealias D = NBDHandshakeDriver

    @Test func greetingIsNBDMAGICIHAVEOPTAndFixedNewstyleNoZeroes() {
        var out: [UInt8] = []
        NBDHandshake(export: D.export).greeting(into: &out)
        #expect(out == Array("NBDMAGICIHAVEOPT".utf8) + [0, 3])
        #expect(out.count == NBDHandshake.greetingLength)
    }

    @Test func unknownClientFlagsCloseTheConnection() {
        var d = D(clientFlags: 4)
        #expect(d.outcome == .closed(.unknownClientFlags(4)))
        d = D(clientFlags: 1)
        #expect(d.outcome == .pending)
    }

    @Test func goAnswersExportAndBlockSizeThenAckAndEntersTransmission() {
        var d = D()
        let replies = d.option(.go, D.goData(name: "disk"))
        #expect(replies.map(\.type) == [.info, .info, .ack])
        // NBD_INFO_EXPORT: type 0, size, flags (no DF: structured replies were not negotiated).
        let flags = D.export.transmissionFlags(structuredReplies: false)
        #expect(!flags.contains(.sendDF))
        #expect(replies[0].payload == D.be(UInt16(0)) + D.be(UInt64(1 << 30)) + D.be(flags.rawValue))
        // NBD_INFO_BLOCK_SIZE: min = sector size, preferred 4096, max 32 MiB.
        #expect(replies[1].payload == D.be(UInt16(3)) + D.be(UInt32(512)) + D.be(UInt32(4096)) + D.be(UInt32(32 << 20)))
        guard case .transmission(let session) = d.outcome else {
            Issue.record("\(d.outcome)")
            return
        }
        #expect(!session.structuredReplies && session.allocationContext == nil && session.agreedBlockSize)
        #expect(session.exportName == "disk" && session.transmissionFlags == flags)
    }

    @Test func theEmptyNameIsTheDefaultExportAndOtherNamesAreUnknown() {
        var d = D()
        #expect(d.option(.info, D.goData(name: "")).map(\.type) == [.info, .info, .ack])
        #expect(d.outcome == .pending, "INFO does not enter transmission")
        #expect(d.option(.go, D.goData(name: "other")).map(\.type) == [.unknown])
        #expect(d.outcome == .pending)
        #expect(d.option(.go, D.goData(name: "")).last?.type == .ack)
        if case .transmission(let s) = d.outcome { #expect(s.exportName == "") } else { Issue.record("\(d.outcome)") }
    }

    @Test func infoNameIsAnsweredWhenAsked() {
        var d = D()
        let replies = d.option(.info, D.goData(infos: [NBDInfoType.name.rawValue]))
        #expect(replies.count == 4)
        #expect(replies[2].payload == D.be(UInt16(1)) + Array("disk".utf8))
    }

    @Test func malformedGoIsInvalid() {
        var d = D()
        // Name length beyond the data.
        #expect(d.option(.go, D.be(UInt32(100)) + [0, 0]).map(\.type) == [.invalid])
        // Count of information requests not matching the length.
        #expect(d.option(.go, D.be(UInt32(0)) + D.be(UInt16(2)) + D.be(UInt16(3))).map(\.type) == [.invalid])
        #expect(d.option(.go, [1, 2]).map(\.type) == [.invalid])
        #expect(d.outcome == .pending)
    }

    @Test func exportNameAnswersSizeFlagsAndZeroesUnlessNoZeroes() {
        var d = D(clientFlags: 1)
        _ = d.option(.exportName, Array("disk".utf8))
        #expect(d.output.count == 8 + 2 + 124)
        #expect(Array(d.output.prefix(8)) == D.be(UInt64(1 << 30)))
        var quiet = D(clientFlags: 3)
        _ = quiet.option(.exportName, [])
        #expect(quiet.output.count == 10)
        guard case .transmission = quiet.outcome else {
            Issue.record("\(quiet.outcome)")
            return
        }
        var unknown = D()
        _ = unknown.option(.exportName, Array("nope".utf8))
        #expect(unknown.outcome == .closed(.exportRefused) && unknown.output.isEmpty)
    }

    @Test func listNamesTheOneExport() {
        var d = D()
        let replies = d.option(.list)
        #expect(replies.map(\.type) == [.server, .ack])
        #expect(replies[0].payload == D.be(UInt32(4)) + Array("disk".utf8))
        #expect(d.option(.list, [1]).map(\.type) == [.invalid])
    }

    @Test func abortIsAcknowledgedAndCloses() {
        var d = D()
        #expect(d.option(.abort).map(\.type) == [.ack])
        #expect(d.outcome == .closed(.aborted))
    }

    @Test func unknownOptionsAreUnsupportedAndTLSIsPolicy() {
        var d = D()
        #expect(d.option(0x1234, [1, 2, 3]).map(\.type) == [.unsupported])
        #expect(d.option(.startTLS).map(\.type) == [.policy])
        #expect(d.option(.extendedHeaders).map(\.type) == [.unsupported])
        #expect(d.outcome == .pending)
    }

    @Test func structuredRepliesThenBaseAllocationThenGoGivesDFAndTheContext() {
        var d = D()
        // SET_META_CONTEXT before structured replies is invalid.
        #expect(d.option(.setMetaContext, D.metaData(queries: ["base:allocation"])).map(\.type) == [.invalid])
        #expect(d.option(.structuredReply).map(\.type) == [.ack])
        let list = d.option(.listMetaContext, D.metaData(queries: []))
        #expect(list.map(\.type) == [.metaContext, .ack])
        #expect(list[0].payload == D.be(UInt32(0)) + Array("base:allocation".utf8))
        #expect(d.option(.listMetaContext, D.metaData(queries: ["base:"])).map(\.type) == [.metaContext, .ack])
        #expect(d.option(.listMetaContext, D.metaData(queries: ["qemu:dirty-bitmap:x"])).map(\.type) == [.ack])
        let set = d.option(.setMetaContext, D.metaData(name: "disk", queries: ["x-foo:bar", "base:allocation"]))
        #expect(set.map(\.type) == [.metaContext, .ack])
        #expect(set[0].payload == D.be(NBDHandshake.allocationContextID) + Array("base:allocation".utf8))
        _ = d.option(.go, D.goData())
        guard case .transmission(let s) = d.outcome else {
            Issue.record("\(d.outcome)")
            return
        }
        #expect(s.structuredReplies && s.allocationContext == NBDHandshake.allocationContextID)
        #expect(s.transmissionFlags.contains(.sendDF))
    }

    @Test func aFailedOrEmptySetClearsTheSelection() {
        var d = D()
        _ = d.option(.structuredReply)
        _ = d.option(.setMetaContext, D.metaData(queries: ["base:allocation"]))
        #expect(d.handshake.allocationContext != nil)
        #expect(
            d.option(.setMetaContext, D.metaData(name: "nope", queries: ["base:allocation"])).map(\.type) == [.unknown])
        #expect(d.handshake.allocationContext == nil)
        _ = d.option(.setMetaContext, D.metaData(queries: ["base:allocation"]))
        #expect(d.option(.setMetaContext, D.metaData(queries: ["base:"])).map(\.type) == [.ack])
        #expect(d.handshake.allocationContext == nil)
        // A query length past the data is invalid.
        #expect(
            d.option(.setMetaContext, D.be(UInt32(0)) + D.be(UInt32(1)) + D.be(UInt32(50))).map(\.type) == [.invalid])
    }

    @Test func refusedAvailabilityIsPolicyAndShutdownIsShutdown() {
        var d = D()
        let refused = d.option(.go, D.goData(), availability: .refused("a ring frontend is attached"))
        #expect(refused.map(\.type) == [.policy])
        #expect(refused[0].payload == Array("a ring frontend is attached".utf8))
        #expect(d.outcome == .pending)
        #expect(d.option(.list, availability: .shuttingDown).map(\.type) == [.shutdown])
        #expect(d.option(.abort, availability: .shuttingDown).map(\.type) == [.ack])
        var e = D()
        _ = e.option(.exportName, [], availability: .refused("busy"))
        #expect(e.outcome == .closed(.exportRefused))
    }

    @Test func oversizedOptionDataIsSkippedUnbufferedAndAnsweredTooBig() {
        var d = D()
        let length = UInt32(NBDHandshake.maximumOptionLength + 1)
        d.output.removeAll()
        d.send(D.be(NBDMagic.option) + D.be(NBDOption.go.rawValue) + D.be(length))
        #expect(d.output.isEmpty)
        // Fed in pieces: still pending until the last byte, then TOO_BIG, and the stream stays in step.
        for _ in 0..<Int(length) / 4096 { d.send([UInt8](repeating: 0xff, count: 4096)) }
        #expect(d.outcome == .pending && d.output.isEmpty)
        d.send([UInt8](repeating: 0xff, count: Int(length) % 4096))
        #expect(D.replies(d.output).map(\.type) == [.tooBig])
        #expect(d.option(.go, D.goData()).last?.type == .ack)
    }

    @Test func badOptionMagicAndTooManyOptionsClose() {
        var d = D()
        d.send([UInt8](repeating: 0, count: 16))
        #expect(d.outcome == .closed(.badOptionMagic(0)))
        var e = D()
        for _ in 0..<NBDHandshake.maximumOptions { _ = e.option(0x99) }
        #expect(e.outcome == .pending)
        _ = e.option(0x99)
        #expect(e.outcome == .closed(.tooManyOptions))
    }

    @Test func bytesAfterGoAreLeftForTransmission() {
        var d = D()
        var bytes = D.be(NBDMagic.option) + D.be(NBDOption.go.rawValue)
        let data = D.goData()
        bytes += D.be(UInt32(data.count)) + data + [0x25, 0x60, 0x95, 0x13]
        d.send(bytes)
        guard case .transmission = d.outcome else {
            Issue.record("\(d.outcome)")
            return
        }
        #expect(d.consumed == bytes.count - 4)
    }

    @Test func aReadOnlyExportAdvertisesNoWriteFeatures() {
        let e = NBDExport(name: "ro", size: 4096, minimumBlockSize: 4096, readOnly: true)
        let f = e.transmissionFlags(structuredReplies: true)
        #expect(f.contains([.hasFlags, .readOnly, .sendFlush, .sendFUA, .canMultiConn, .sendDF, .sendCache]))
        #expect(f.isDisjoint(with: [.sendTrim, .sendWriteZeroes, .sendFastZero]))
    }
}
