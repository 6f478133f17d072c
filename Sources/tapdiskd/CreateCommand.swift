import ArgumentParser
import Glibc
import TapDisk

extension ImageCreator.Preallocation: ExpressibleByArgument {}

/// `tapdiskd create`, like `qemu-img create` for raw images, but it never overwrites a file and
/// gives back every block of a preallocation that failed.
struct CreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a raw disk image.")

    @Argument(help: "Path of the new image (must not exist).")
    var path: String

    @Option(help: "Size in bytes, with an optional K, M, G or T suffix (powers of 1024).")
    var size: String

    @Option(help: "off (sparse), falloc (posix_fallocate) or full (write zeros).")
    var preallocate: ImageCreator.Preallocation = .off

    /// A size that does not parse, or that no image can have, is a usage error (64) like any
    /// other bad option value, whether it is `lots`, `-1` or `0`; exit 1 is kept for failures
    /// of the creation itself (the file exists, no space).
    func validate() throws {
        do {
            try ImageCreator.validate(sizeBytes: try ByteSize.parse(size))
        } catch let e as ByteSize.ParseError {
            throw ValidationError("--size: \(e.message)")
        } catch let e as ImageCreator.CreationError {
            throw ValidationError("--size: \(e.message)")
        }
    }

    func run() throws {
        let bytes: UInt64
        do {
            bytes = try ByteSize.parse(size)
        } catch {
            printError("tapdiskd: --size: \(error.message)")
            throw ExitCode(64)
        }
        // Only `full` writes every byte; `off` and `falloc` finish at once.
        let progress = preallocate == .full ? PreallocationProgress(totalBytes: bytes) : nil
        do {
            try ImageCreator.create(
                path: path, sizeBytes: bytes, preallocation: preallocate,
                progress: progress.map { p in { p.update(writtenBytes: $0) } })
        } catch {
            progress?.finish()
            printError("tapdiskd: \(error.message)")
            throw ExitCode(1)
        }
        progress?.finish()
        print("created \(path): \(bytes) bytes, preallocation \(preallocate.rawValue)")
    }
}
