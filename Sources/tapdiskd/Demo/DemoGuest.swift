import Glibc

/// Finds what the demo's VM act needs: QEMU, `scripts/guest.sh` and its cached kernel and
/// initramfs (building the cache once when it is missing). The act is optional, so every
/// shortfall becomes a reason to print, never a crash.
enum DemoGuest {
    /// Either the path of `scripts/guest.sh`, ready to boot a guest, or why the act cannot run.
    enum Availability {
        case ready(guestScript: String)
        case unavailable(String)
    }

    static var cacheDirectory: String {
        getenv("TAPDISK_GUEST_DIR").map { String(cString: $0) } ?? "/var/cache/tapdisk-guest"
    }

    static var cacheIsBuilt: Bool {
        access(cacheDirectory + "/vmlinuz", R_OK) == 0 && access(cacheDirectory + "/initrd.cpio", R_OK) == 0
    }

    /// `scripts/guest.sh` of the checkout this binary was built in: SwiftPM puts the binary at
    /// `.build/<triple>/<config>/tapdiskd`, so the checkout is a few levels up. An installed
    /// binary has no checkout; then the current directory is tried (`scripts/demo.sh` runs from
    /// the repository root).
    static func locateGuestScript() -> String? {
        var directory = DemoScenario.selfExecutable
        var candidates: [String] = []
        for _ in 0..<5 {
            guard let slash = directory.lastIndex(of: "/"), slash != directory.startIndex else { break }
            directory = String(directory[..<slash])
            candidates.append(directory + "/scripts/guest.sh")
        }
        candidates.append("scripts/guest.sh")
        return candidates.first { access($0, X_OK) == 0 }
    }

    /// Decides whether the act can run, building the guest cache if that is all that is missing.
    /// Building downloads a Debian kernel package once (about 6 s); its output goes to `log`.
    static func prepare(log: String, progress: DemoProgress) -> Availability {
        guard Subprocess.which("qemu-system-x86_64") else {
            return .unavailable("qemu-system-x86_64 is not installed (scripts/setup.sh installs qemu-system-x86)")
        }
        guard let guestScript = locateGuestScript() else {
            return .unavailable("scripts/guest.sh not found (run the demo from a checkout: scripts/demo.sh)")
        }
        if !cacheIsBuilt {
            progress.say(
                "  building the guest once: \(guestScript) build (kernel and initramfs into \(cacheDirectory))")
            let pid: pid_t
            do {
                pid = try Subprocess.spawn([guestScript, "build"], logPath: log)
            } catch {
                return .unavailable("cannot run \(guestScript) build: \(error)")
            }
            let status = Subprocess.wait(pid, timeoutSeconds: 300)
            if status == nil { kill(pid, SIGKILL) }
            guard status == 0, cacheIsBuilt else {
                let tail = Subprocess.readFile(log).trimmed.split(separator: "\n").last.map(String.init) ?? ""
                return .unavailable("\(guestScript) build failed (\(tail.isEmpty ? "no output" : tail))")
            }
        }
        return .ready(guestScript: guestScript)
    }
}
