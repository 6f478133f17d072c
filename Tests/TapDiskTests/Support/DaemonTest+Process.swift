import Foundation
import Glibc

@testable import TapDisk

/// What a test can see of the daemon process from outside: its fds, its connections, the system
/// call it sits in and the CPU it uses. These are the observable events tests wait on instead of
/// sleeping: a connection's close is processed when its socket leaves the daemon's fd table, a
/// stalled read is under way when the daemon sits in `poll` rather than `epoll_wait`.
extension DaemonTest {
    // MARK: - fds and connections

    /// Open fds of a process (`/proc/PID/fd`).
    static func fdCount(pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// Inodes of the connections a process accepted on the socket bound at `path` (an accepted
    /// AF_UNIX socket carries its listener's path; sockets the process inherited, its listeners
    /// and its datagram sockets are left out). A connection whose client closed stays here until
    /// the daemon has processed the close.
    static func connectedSockets(pid: Int32, path: String) -> Set<UInt64> {
        let dir = "/proc/\(pid)/fd"
        var held = Set<UInt64>()
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(dir)/\(name)"),
                target.hasPrefix("socket:["), let inode = UInt64(target.dropFirst(8).dropLast())
            else { continue }
            held.insert(inode)
        }
        guard let table = ProcFile.read("/proc/net/unix") else { return [] }
        var connected = Set<UInt64>()
        // Num RefCount Protocol Flags Type St Inode [Path]; St 03 = SS_CONNECTED.
        for line in table.split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count == 8, f[7] == path, f[4] == "0001" || f[4] == "0005", f[5] == "03",
                let inode = UInt64(f[6]), held.contains(inode)
            else { continue }
            connected.insert(inode)
        }
        return connected
    }

    /// The daemon's fds with exactly `liveConnections` connections open: what it holds now, less
    /// the connections it has not yet seen close (earlier checks', the fixture's start-up probe),
    /// plus the ones the caller keeps. A baseline for leak checks that needs no settling time.
    static func baselineFDCount(_ daemon: DaemonProcess, liveConnections: Int = 0) -> Int {
        fdCount(pid: daemon.pid) - connectedSockets(pid: daemon.pid, path: daemon.socketPath).count + liveConnections
    }

    // MARK: - What the daemon is doing

    /// Whether some thread of the process is blocked in `poll`/`ppoll`. The daemon sleeps in
    /// `epoll_wait` between events; it calls `poll` only inside a vhost-user message whose bytes
    /// have begun to arrive (CLibAIO's `recv_exact`), so this is the proof that it is reading one.
    static func isInsidePoll(pid: Int32) -> Bool { !pollTimeouts(pid: pid).isEmpty }

    /// The timeouts (ms; -1 for ppoll, whose timeout is a pointer) of the `poll` calls the
    /// process's threads are blocked in. A `ControlClient` waits for a reply with a 30 s timeout
    /// and `ctl events` for the next event with 60 s: which one a `ctl` sits in tells them apart.
    static func pollTimeouts(pid: Int32) -> [Int64] {
        #if arch(x86_64)
            let poll: Substring = "7"
            let ppoll: Substring = "271"
        #else
            let poll: Substring = "-"  // the generic syscall table has no poll
            let ppoll: Substring = "73"
        #endif
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.compactMap { task in
            // "NR arg1 arg2 arg3 ... sp pc" while blocked in a system call, "running" otherwise.
            let text = ProcFile.read("/proc/\(pid)/task/\(task)/syscall") ?? ""
            let f = text.split(separator: " ")
            guard let nr = f.first else { return nil }
            if nr == ppoll { return -1 }
            guard nr == poll, f.count > 3, let t = UInt64(f[3].dropFirst(2), radix: 16) else { return nil }
            return Int64(Int32(truncatingIfNeeded: t))
        }
    }

    /// CPU time (user + system, seconds) the process has used so far.
    static func cpuSeconds(pid: Int32) -> Double {
        guard let text = ProcFile.read("/proc/\(pid)/stat"),
            let close = text.lastIndex(of: ")")
        else { return 0 }
        let fields = text[text.index(after: close)...].split(separator: " ")
        let ticks = (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)
        return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Share of one core the process uses over `seconds` (the sleep is the measuring window).
    static func cpuShare(pid: Int32, seconds: Double) -> Double {
        let before = cpuSeconds(pid: pid)
        let start = MonotonicClock.nanoseconds()
        usleep(UInt32(seconds * 1e6))
        let elapsed = Double(MonotonicClock.nanoseconds() - start) / 1e9
        return (cpuSeconds(pid: pid) - before) / elapsed
    }
}

extension DaemonTest {
    /// Context switches (voluntary + nonvoluntary) summed over every thread of `pid`: each time
    /// a sleeping daemon wakes counts one (`/proc/PID/status` alone covers only the main thread).
    static func contextSwitches(pid: Int32) -> Int {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        var total = 0
        for task in tasks {
            let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/status", encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n")
            where line.hasPrefix("voluntary_ctxt_switches:") || line.hasPrefix("nonvoluntary_ctxt_switches:") {
                total += Int(line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) ?? 0
            }
        }
        return total
    }

    /// The daemon's wake-ups over a `seconds` window (the sleep is the measuring window).
    static func wakeups(pid: Int32, seconds: Double) -> Int {
        let before = contextSwitches(pid: pid)
        usleep(UInt32(seconds * 1e6))
        return contextSwitches(pid: pid) - before
    }
}
