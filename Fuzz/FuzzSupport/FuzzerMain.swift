import Glibc

/// The one entry point every fuzz target's `@main` calls.
///
/// SwiftPM links an executable target on Linux with `--defsym main=<Target>_main`, so libFuzzer's
/// own `main` can never be the entry point; instead, in the libFuzzer build (`-D FUZZING`, see
/// scripts/fuzz.sh) the target's `@main` hands control to libFuzzer's driver, and in a plain
/// build it replays files, so `swift build` needs no fuzzer runtime at all.
package func fuzzTargetMain(
    _ name: String, _ body: (UnsafeRawBufferPointer) -> Void,
    libFuzzerCallback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Never {
    #if FUZZING
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, libFuzzerCallback))
    #else
        replayMain(name, body)
    #endif
}

#if FUZZING
    /// libFuzzer's public driver (`FuzzerInterface.h`), linked in by `-sanitize=fuzzer`.
    @_silgen_name("LLVMFuzzerRunDriver")
    private func LLVMFuzzerRunDriver(
        _ argc: UnsafeMutablePointer<Int32>,
        _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32
#endif
