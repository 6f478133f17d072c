import Foundation

/// Runs `promtool check metrics` on exposition text fed to its standard input.
enum PromtoolCheck {
    static func run(_ text: String) throws -> (status: Int32, output: String) {
        let path = DaemonProcess.makeDirectory() + "/metrics.txt"
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let r = try Shell.run(["sh", "-c", "promtool check metrics < '\(path)'"])
        return (r.status, (r.stdout + r.stderr).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
