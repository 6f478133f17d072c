import Testing

@testable import TapDisk

@Suite struct ByteSizeTests {
    @Test(arguments: [
        ("0", UInt64(0)), ("512", 512), ("1K", 1024), ("1k", 1024), ("4M", 4 << 20), ("10G", 10 << 30),
        ("2T", 2 << 40), ("16777216", 16 << 20), ("18446744073709551615", UInt64.max), ("16777215T", 16_777_215 << 40),
    ])
    func parsesBytesAndSuffixes(text: String, expected: UInt64) throws {
        #expect(try ByteSize.parse(text) == expected)
    }

    @Test(arguments: [
        "", "K", "-1", "-1K", "+5", " 5", "5 ", "1.5G", "1KB", "1KiB", "1P", "abc", "0x10", "1e3",
        "18446744073709551616", "16777216T", "99999999999999999999999", "٣",
    ])
    func rejectsGarbage(text: String) {
        #expect(throws: ByteSize.ParseError.self) { try ByteSize.parse(text) }
    }

    @Test func negativeAndOverflowMessagesSaySo() {
        #expect(throws: ByteSize.ParseError.self) { try ByteSize.parse("-4K") }
        do {
            _ = try ByteSize.parse("-4K")
        } catch {
            #expect(error.message.contains("negative"))
        }
        do {
            _ = try ByteSize.parse("17000000T")
        } catch {
            #expect(error.message.contains("too large"))
        }
    }

    @Test func lowSpaceThresholdForms() throws {
        #expect(try LowSpaceThreshold.parse("64M") == .bytes(64 << 20))
        #expect(try LowSpaceThreshold.parse("1024") == .bytes(1024))
        #expect(try LowSpaceThreshold.parse("5%") == .percent(5))
        #expect(try LowSpaceThreshold.parse("0.5%") == .percent(0.5))
        #expect(try LowSpaceThreshold.parse("100%") == .percent(100))
        for bad in ["0%", "100.1%", "-5%", "%", "abc%", "1e1%", "inf%", "nan%", "5%%", "1.2.3%", "5 %", "5K%", "-1"] {
            #expect(throws: ByteSize.ParseError.self, "\(bad)") { try LowSpaceThreshold.parse(bad) }
        }
    }

    @Test func thresholdBytes() {
        #expect(LowSpaceThreshold.bytes(4096).thresholdBytes(filesystemSizeBytes: 1 << 30) == 4096)
        #expect(LowSpaceThreshold.percent(10).thresholdBytes(filesystemSizeBytes: 1000) == 100)
        #expect(LowSpaceThreshold.percent(100).thresholdBytes(filesystemSizeBytes: UInt64.max) == UInt64.max)
        #expect(LowSpaceThreshold.percent(33.3).thresholdBytes(filesystemSizeBytes: 1000) == 333)
        #expect(LowSpaceThreshold.percent(50).thresholdBytes(filesystemSizeBytes: 0) == 0)
        #expect(LowSpaceThreshold.percent(1).thresholdBytes(filesystemSizeBytes: 16 << 20) == (16 << 20) / 100)
    }
}
