import CLibAIO
import Glibc
import Testing

@testable import TapDisk

/// virtio-blk request classification and the config space layout.
@Suite struct VhostUserVirtioBlkTests {
    typealias Ring = VhostUserTestRing

    static let disk = VirtioBlkDisk(
        capacitySectors: 2048, blockSize: 512, readOnly: false, discard: true, maxDiscardSectors: 1024,
        maxWriteZeroesSectors: 512)

    /// Pops one chain built by `build` from a real ring and classifies it.
    private func classify(
        disk: VirtioBlkDisk = disk, _ build: (inout Ring) -> Void
    ) throws -> VirtioBlkRequest {
        var ring = try Ring(size: 8)
        var q = try ring.queue()
        let iov = IovecStorage(8)
        build(&ring)
        let c = try #require(q.pop(into: iov.buffer, memory: ring.memory).chain)
        return VirtioBlkRequest.classify(c, storage: iov.buffer, disk: disk)
    }

    private func standard(
        _ type: UInt32, sector: UInt64 = 0, length: UInt32 = 4096, disk: VirtioBlkDisk = disk
    ) throws -> VirtioBlkRequest {
        try classify(disk: disk) { ring in
            ring.request(first: 0, type: type, sector: sector, dataLength: length)
            ring.publish(0)
        }
    }

    /// header + one readable 16-byte discard/write-zeroes segment + status.
    private func segmentRequest(
        _ type: UInt32, sector: UInt64, sectors: UInt32, flags: UInt32, segmentBytes: UInt32 = 16,
        disk: VirtioBlkDisk = disk
    ) throws -> VirtioBlkRequest {
        try classify(disk: disk) { ring in
            ring.request(first: 0, type: type, dataLength: segmentBytes)
            let p = ring.host(Ring.data(0))
            p.storeBytes(of: sector.littleEndian, as: UInt64.self)
            p.storeBytes(of: sectors.littleEndian, toByteOffset: 8, as: UInt32.self)
            p.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt32.self)
            ring.publish(0)
        }
    }

    @Test func readsAndWritesWithinCapacity() throws {
        #expect(try standard(VirtioBlkType.read, sector: 8) == .read(sector: 8, bytes: 4096))
        #expect(try standard(VirtioBlkType.write, sector: 2040) == .write(sector: 2040, bytes: 4096))
        #expect(try standard(VirtioBlkType.write, sector: 2041) == .reject(.ioError, .beyondCapacity))
        #expect(try standard(VirtioBlkType.read, sector: UInt64.max) == .reject(.ioError, .beyondCapacity))
        #expect(try standard(VirtioBlkType.read, length: 100) == .reject(.ioError, .misaligned))
    }

    @Test func blockSizeGovernsAlignment() throws {
        var fourK = Self.disk
        fourK.blockSize = 4096
        #expect(try standard(VirtioBlkType.read, sector: 8, disk: fourK) == .read(sector: 8, bytes: 4096))
        #expect(try standard(VirtioBlkType.read, sector: 1, disk: fourK) == .reject(.ioError, .misaligned))
        #expect(try standard(VirtioBlkType.read, length: 512, disk: fourK) == .reject(.ioError, .misaligned))
    }

    @Test func dataDirectionMustMatchTheType() throws {
        // A read whose data is device-readable, a write whose data is device-writable.
        let readWrong = try classify { ring in
            ring.request(first: 0, type: VirtioBlkType.write)
            ring.writeHeader(at: Ring.data(0x8_0000), type: VirtioBlkType.read)
            ring.publish(0)
        }
        #expect(readWrong == .reject(.ioError, .wrongDirection))
        let writeWrong = try classify { ring in
            ring.request(first: 0, type: VirtioBlkType.read)
            ring.writeHeader(at: Ring.data(0x8_0000), type: VirtioBlkType.write)
            ring.publish(0)
        }
        #expect(writeWrong == .reject(.ioError, .wrongDirection))
        let flushWithData = try standard(VirtioBlkType.flush)
        #expect(flushWithData == .reject(.ioError, .wrongDirection))
    }

    @Test func flushGetIDAndUnknownTypes() throws {
        let flush = try classify { ring in
            ring.writeHeader(at: Ring.data(0), type: VirtioBlkType.flush)
            ring.setDescriptor(0, address: Ring.data(0), length: 16, flags: Ring.N, next: 1)
            ring.setDescriptor(1, address: Ring.data(16), length: 1, flags: Ring.W)
            ring.publish(0)
        }
        #expect(flush == .flush)
        #expect(try standard(VirtioBlkType.getID, length: 20) == .getID(bytes: 20))
        #expect(try standard(2) == .reject(.unsupported, .unsupportedType(2)))  // SCSI_CMD
        #expect(try standard(14) == .reject(.unsupported, .unsupportedType(14)))  // SECURE_ERASE
        #expect(try standard(0x8000_0000) == .reject(.unsupported, .unsupportedType(0x8000_0000)))
    }

    @Test func readOnlyDisksRefuseWritesAndDoNotOfferDiscard() throws {
        let ro = VirtioBlkDisk(
            capacitySectors: 2048, blockSize: 512, readOnly: true, discard: true, maxDiscardSectors: 1024,
            maxWriteZeroesSectors: 512)
        #expect(!ro.discard)
        #expect(try standard(VirtioBlkType.write, disk: ro) == .reject(.ioError, .readOnly))
        #expect(try standard(VirtioBlkType.read, disk: ro) == .read(sector: 0, bytes: 4096))
        #expect(
            try segmentRequest(VirtioBlkType.discard, sector: 0, sectors: 8, flags: 0, disk: ro)
                == .reject(.unsupported, .unsupportedType(11)))
        #expect(VirtioFeatures.offered(readOnly: true) & VirtioFeatures.blkReadOnly != 0)
        #expect(VirtioFeatures.offered(readOnly: true) & VirtioFeatures.blkDiscard == 0)
        #expect(VirtioFeatures.offered(readOnly: false) & VirtioFeatures.blkWriteZeroes != 0)
    }

    @Test func discardAndWriteZeroesSegments() throws {
        #expect(
            try segmentRequest(VirtioBlkType.discard, sector: 8, sectors: 16, flags: 0)
                == .discard(sector: 8, sectors: 16))
        #expect(
            try segmentRequest(VirtioBlkType.writeZeroes, sector: 8, sectors: 16, flags: 1)
                == .writeZeroes(sector: 8, sectors: 16, unmap: true))
        #expect(
            try segmentRequest(VirtioBlkType.discard, sector: 8, sectors: 16, flags: 1)
                == .reject(.unsupported, .unsupportedFlags(1)))
        #expect(
            try segmentRequest(VirtioBlkType.writeZeroes, sector: 8, sectors: 16, flags: 2)
                == .reject(.unsupported, .unsupportedFlags(2)))
        #expect(
            try segmentRequest(VirtioBlkType.discard, sector: 0, sectors: 1025, flags: 0)
                == .reject(.ioError, .tooManySectors))
        #expect(
            try segmentRequest(VirtioBlkType.writeZeroes, sector: 2000, sectors: 49, flags: 0)
                == .reject(.ioError, .beyondCapacity))
        #expect(
            try segmentRequest(VirtioBlkType.discard, sector: UInt64.max, sectors: 1, flags: 0)
                == .reject(.ioError, .beyondCapacity))
        #expect(
            try segmentRequest(VirtioBlkType.discard, sector: 0, sectors: 0, flags: 0)
                == .reject(.ioError, .emptyTransfer))
        // Two segments (we advertise max_discard_seg = 1) or a short one.
        #expect(
            try segmentRequest(VirtioBlkType.discard, sector: 0, sectors: 8, flags: 0, segmentBytes: 32)
                == .reject(.ioError, .badSegmentPayload))
        #expect(
            try segmentRequest(VirtioBlkType.discard, sector: 0, sectors: 8, flags: 0, segmentBytes: 8)
                == .reject(.ioError, .badSegmentPayload))
    }

    @Test func statusByteIsWrittenInPlace() {
        var byte: UInt8 = 0xff
        VirtioBlkStatus.unsupported.write(to: &byte)
        #expect(byte == 2)
        VirtioBlkStatus.ok.write(to: &byte)
        #expect(byte == 0)
        #expect(VirtioBlkStatus.ioError.rawValue == 1)
    }

    @Test func configOffsetsMatchTheKernelHeader() {
        typealias O = VirtioBlkConfig.Offset
        #expect(O.capacity == Int(clibaio_vblk_cfg_capacity))
        #expect(O.sizeMax == Int(clibaio_vblk_cfg_size_max))
        #expect(O.segMax == Int(clibaio_vblk_cfg_seg_max))
        #expect(O.geometry == Int(clibaio_vblk_cfg_geometry))
        #expect(O.blockSize == Int(clibaio_vblk_cfg_blk_size))
        #expect(O.physicalBlockExponent == Int(clibaio_vblk_cfg_physical_block_exp))
        #expect(O.minIOSize == Int(clibaio_vblk_cfg_min_io_size))
        #expect(O.optIOSize == Int(clibaio_vblk_cfg_opt_io_size))
        #expect(O.writeCacheEnable == Int(clibaio_vblk_cfg_wce))
        #expect(O.numQueues == Int(clibaio_vblk_cfg_num_queues))
        #expect(O.maxDiscardSectors == Int(clibaio_vblk_cfg_max_discard_sectors))
        #expect(O.maxDiscardSegments == Int(clibaio_vblk_cfg_max_discard_seg))
        #expect(O.discardSectorAlignment == Int(clibaio_vblk_cfg_discard_sector_alignment))
        #expect(O.maxWriteZeroesSectors == Int(clibaio_vblk_cfg_max_write_zeroes_sectors))
        #expect(O.maxWriteZeroesSegments == Int(clibaio_vblk_cfg_max_write_zeroes_seg))
        #expect(O.writeZeroesMayUnmap == Int(clibaio_vblk_cfg_write_zeroes_may_unmap))
        #expect(VirtioBlkConfig.byteCount == Int(clibaio_vblk_cfg_secure_erase_start))
        #expect(MemoryLayout<clibaio_virtq_desc>.size == 16)
        #expect(MemoryLayout<clibaio_virtio_blk_outhdr>.size == 16)
        #expect(MemoryLayout<clibaio_vhost_memory_region>.size == 32)
        #expect(MemoryLayout<clibaio_vhost_vring_addr>.size == 40)
    }

    @Test func configEncodesLittleEndianAtTheSpecOffsets() {
        var c = VirtioBlkConfig(capacity: 0x0102_0304_0506_0708, sizeMax: 0x10_0000, segMax: 126, blockSize: 4096)
        c.maxDiscardSectors = 0x3fff_ffff
        c.maxDiscardSegments = 1
        c.discardSectorAlignment = 8
        c.maxWriteZeroesSectors = 0x1234
        c.maxWriteZeroesSegments = 1
        c.writeZeroesMayUnmap = 1
        let b = c.bytes()
        func u32(_ o: Int) -> UInt32 {
            b.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
        }
        #expect(b.count == 60)
        #expect(Array(b[0..<8]) == [8, 7, 6, 5, 4, 3, 2, 1])
        #expect(u32(8) == 0x10_0000 && u32(12) == 126 && u32(20) == 4096)
        #expect(b[34] == 1 && b[35] == 0)  // num_queues
        #expect(u32(36) == 0x3fff_ffff && u32(40) == 1 && u32(44) == 8 && u32(48) == 0x1234 && u32(52) == 1)
        #expect(b[56] == 1 && b[57...].allSatisfy { $0 == 0 })
        // GET_CONFIG windows: QEMU 7.2 asked for 57 bytes at 0; past our fields reads as zero.
        #expect(c.window(offset: 0, size: 57) == Array(b[0..<57]))
        #expect(c.window(offset: 36, size: 8) == Array(b[36..<44]))
        #expect(c.window(offset: 60, size: 196) == [UInt8](repeating: 0, count: 196))
        #expect(c.window(offset: 250, size: 7) == nil)
        #expect(c.window(offset: UInt32.max, size: 2) == nil)
    }
}
