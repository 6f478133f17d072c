import Foundation
import Testing

/// The libFuzzer targets' seed corpora (`Fuzz/Corpus/<target>/`, inputs that once found a bug
/// among them) replayed by the plain-build replayers on every test run, so a regression in a
/// parser's invariants fails CI without libFuzzer (docs/fuzzing.md). The replayers are built by
/// `swift build` (scripts/test.sh runs it first); a missing one fails the test.
@Suite struct FuzzCorpusTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    static var binaryDirectory: String { URL(fileURLWithPath: DaemonProcess.binary).deletingLastPathComponent().path }

    @Test(arguments: ["ControlRequestFuzzer", "VhostMessageFuzzer", "VirtqueueFuzzer", "BlkifValidatorFuzzer", "NBDProtocolFuzzer"])
    func seedCorpusHoldsEveryInvariant(target: String) throws {
        let binary = Self.binaryDirectory + "/" + target
        try #require(
            FileManager.default.isExecutableFile(atPath: binary), "\(target) not built (run `swift build` first)")
        let corpus = Self.repository.appendingPathComponent("Fuzz/Corpus/\(target)").path
        let inputs = try FileManager.default.contentsOfDirectory(atPath: corpus).count
        #expect(inputs > 0)
        let result = try Shell.run([binary, corpus])
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect((result.stdout + result.stderr).contains("\(inputs) inputs replayed, all invariants held"))
    }
}
