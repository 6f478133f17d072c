import Glibc

/// The `main` of a fuzz target built without libFuzzer (a plain `swift build`): runs the target
/// once per file named on the command line (a directory stands for the files in it), so every
/// fuzzer doubles as a regression runner over its corpus and over crash inputs.
///
/// Exits 0 after running every input, 2 on a usage or I/O error; a violated invariant aborts.
package func replayMain(_ name: String, _ body: (UnsafeRawBufferPointer) -> Void) -> Never {
    let arguments = CommandLine.arguments.dropFirst()
    if arguments.isEmpty {
        print("usage: \(name) FILE|DIR...  (replays inputs; scripts/fuzz.sh builds the libFuzzer binary)")
        exit(2)
    }
    var count = 0
    for path in arguments {
        for file in files(at: path) {
            guard let bytes = readFile(file) else {
                print("\(name): cannot read \(file)")
                exit(2)
            }
            bytes.withUnsafeBytes { body($0) }
            count += 1
        }
    }
    print("\(name): \(count) inputs replayed, all invariants held")
    exit(0)
}

private func files(at path: String) -> [String] {
    guard let dir = opendir(path) else { return [path] }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if !name.hasPrefix(".") { names.append(path + "/" + name) }
    }
    return names.sorted()
}

private func readFile(_ path: String) -> [UInt8]? {
    guard let f = fopen(path, "rb") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&chunk, 1, chunk.count, f)
        bytes += chunk.prefix(n)
        if n < chunk.count { return ferror(f) == 0 ? bytes : nil }
    }
}
