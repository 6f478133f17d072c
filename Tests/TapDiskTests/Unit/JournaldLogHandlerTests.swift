import Foundation
import Glibc
import Logging
import Testing

@testable import TapDisk

@Suite struct JournaldLogHandlerTests {
    /// Runs `body` with the write end of a pipe while a reader thread drains it (so writers
    /// never block on a full pipe), and returns everything written.
    private func capture(_ body: (Int32) -> Void) -> String {
        final class Sink: @unchecked Sendable {
            var bytes = [UInt8]()
            let done = DispatchSemaphore(value: 0)
        }
        var fds: [Int32] = [0, 0]
        precondition(pipe(&fds) == 0)
        let readFD = fds[0]
        let sink = Sink()
        Thread {
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(readFD, &buf, buf.count)
                if n <= 0 { break }
                sink.bytes += buf[0..<n]
            }
            sink.done.signal()
        }.start()
        body(fds[1])
        close(fds[1])
        sink.done.wait()
        close(readFD)
        return String(decoding: sink.bytes, as: UTF8.self)
    }

    @Test func priorityPrefixes() {
        let expected: [(Logger.Level, Int)] = [
            (.trace, 7), (.debug, 7), (.info, 6), (.notice, 5), (.warning, 4), (.error, 3), (.critical, 2),
        ]
        let text = capture { fd in
            var logger = Logger(label: "tapdiskd") { JournaldLogHandler(label: $0, fd: fd) }
            logger.logLevel = .trace
            for (level, _) in expected { logger.log(level: level, "hello") }
        }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count == expected.count + 1)  // trailing newline
        for (i, (_, prio)) in expected.enumerated() {
            #expect(lines[i] == "<\(prio)>tapdiskd: hello")
        }
    }

    @Test func metadataSortedAndQuoted() {
        let text = capture { fd in
            var logger = Logger(label: "disk") { JournaldLogHandler(label: $0, fd: fd) }
            logger[metadataKey: "zeta"] = "last"
            logger.warning(
                "no space",
                metadata: ["errno": "ENOSPC", "path": "/var/lib/my image.img", "empty": "", "q": "a\"b", "n": "1\n2"])
        }
        #expect(
            text
                == "<4>disk: no space empty=\"\" errno=ENOSPC n=\"1\\n2\" path=\"/var/lib/my image.img\" q=\"a\\\"b\" zeta=last\n"
        )
    }

    @Test func messageNewlinesStayOnOneLine() {
        let text = capture { fd in
            let logger = Logger(label: "l") { JournaldLogHandler(label: $0, fd: fd) }
            logger.error("two\nlines")
        }
        #expect(text == "<3>l: two\\nlines\n")
    }

    @Test func defaultLevelIsInfo() {
        let text = capture { fd in
            let logger = Logger(label: "l") { JournaldLogHandler(label: $0, fd: fd) }
            logger.debug("hidden")
            logger.info("shown")
        }
        #expect(text == "<6>l: shown\n")
    }

    @Test func concurrentLinesNeverInterleave() {
        let threads = 8
        let perThread = 200
        let text = capture { fd in
            let logger = Logger(label: "c") { JournaldLogHandler(label: $0, fd: fd) }
            DispatchQueue.concurrentPerform(iterations: threads) { t in
                for i in 0..<perThread {
                    logger.info("thread \(t) line \(i)", metadata: ["pad": "\(String(repeating: "x", count: 100))"])
                }
            }
        }
        let lines = text.split(separator: "\n")
        #expect(lines.count == threads * perThread)
        #expect(lines.allSatisfy { $0.hasPrefix("<6>c: thread ") && $0.hasSuffix(String(repeating: "x", count: 100)) })
    }
}
