import Glibc
import Testing

@testable import TapDisk

/// The constants and reply layouts against the numbers in doc/proto.md.
@Suite struct NBDWireLayoutTests {
    @Test func magicsAndValuesMatchTheSpec() {
        #expect(NBDMagic.server == 0x4e42_444d_4147_4943)
        #expect(NBDMagic.option == 0x4948_4156_454F_5054)
        #expect(NBDMagic.optionReply == 0x3_e889_0455_65a9)
        #expect(NBDMagic.request == 0x2560_9513)
        #expect(NBDMagic.simpleReply == 0x6744_6698)
        #expect(NBDMagic.structuredReply == 0x668e_33ef)
        #expect(NBDOption.allCases.map(\.rawValue) == Array(1...11))
        #expect(NBDOptionReplyType.unsupported.rawValue == 0x8000_0001)
        #expect(NBDOptionReplyType.tooBig.rawValue == 0x8000_0009)
        #expect(NBDCommand.allCases.map(\.rawValue) == Array(0...7))
        #expect(NBDReplyType.error.rawValue == 32769 && NBDReplyType.blockStatus.rawValue == 5)
        #expect(NBDTransmissionFlags.sendFastZero.rawValue == 1 << 11)
        #expect(NBDTransmissionFlags.canMultiConn.rawValue == 1 << 8)
        #expect(NBDError.allCases.map(\.rawValue) == [1, 5, 12, 22, 28, 75, 95, 108])
    }

    @Test func errnoMapsToTheSpecsErrors() {
        #expect(NBDError(errno: ENOSPC) == .noSpace)
        #expect(NBDError(errno: EDQUOT) == .noSpace)
        #expect(NBDError(errno: EFBIG) == .noSpace)
        #expect(NBDError(errno: EIO) == .io)
        #expect(NBDError(errno: EROFS) == .permission)
        #expect(NBDError(errno: EPERM) == .permission)
        #expect(NBDError(errno: EINVAL) == .invalid)
        #expect(NBDError(errno: ENOMEM) == .noMemory)
        #expect(NBDError(errno: EOVERFLOW) == .overflow)
        #expect(NBDError(errno: EOPNOTSUPP) == .notSupported)
        #expect(NBDError(errno: ESHUTDOWN) == .shutdown)
        // No NBD name: EIO, never the raw number.
        #expect(NBDError(errno: ENXIO) == .io)
        #expect(NBDError(errno: EREMOTEIO) == .io)
    }

    func encode(_ body: (UnsafeMutableRawPointer) -> Int) -> [UInt8] {
        var buffer = [UInt8](repeating: 0xaa, count: 64)
        let n = buffer.withUnsafeMutableBytes { body($0.baseAddress!) }
        return Array(buffer.prefix(n))
    }

    @Test func simpleReplyLayout() {
        let bytes = encode { NBDReplyEncoder.simpleReply(cookie: 0x0102_0304_0506_0708, error: .noSpace, at: $0) }
        #expect(bytes == [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 28, 1, 2, 3, 4, 5, 6, 7, 8])
        #expect(encode { NBDReplyEncoder.success(cookie: 1, at: $0) }[4..<8] == [0, 0, 0, 0])
    }

    @Test func structuredChunkLayouts() {
        #expect(
            encode { NBDReplyEncoder.done(cookie: 9, at: $0) }
                == [0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0])
        let data = encode {
            NBDReplyEncoder.offsetDataHeader(cookie: 9, offset: 4096, dataLength: 512, done: true, at: $0)
        }
        #expect(data.count == 28)
        #expect(Array(data[4..<8]) == [0, 1, 0, 1])  // DONE, OFFSET_DATA
        #expect(Array(data[16..<20]) == [0, 0, 0x02, 0x08])  // 8 + 512
        #expect(Array(data[20..<28]) == [0, 0, 0, 0, 0, 0, 0x10, 0])
        let error = encode { NBDReplyEncoder.errorChunk(cookie: 9, error: .io, at: $0) }
        #expect(error == [0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 6, 0, 0, 0, 5, 0, 0])
        let status = encode { NBDReplyEncoder.blockStatusHeader(cookie: 9, contextID: 1, extents: 2, at: $0) }
        #expect(Array(status[4..<8]) == [0, 1, 0, 5])
        #expect(Array(status[16..<24]) == [0, 0, 0, 20, 0, 0, 0, 1])
        #expect(
            encode { NBDReplyEncoder.extent(length: 4096, flags: [.hole, .zero], at: $0) } == [
                0, 0, 0x10, 0, 0, 0, 0, 3,
            ])
        // A failure to a structured client is an error chunk, to a simple one a simple reply.
        #expect(encode { NBDReplyEncoder.failure(cookie: 9, error: .io, structured: true, at: $0) } == error)
        #expect(encode { NBDReplyEncoder.failure(cookie: 9, error: .io, structured: false, at: $0) }.count == 16)
    }
}
