/// QEMU-style summary of the last I/O failure (§6.1).
package enum IOStatus: String, Sendable {
    case ok
    case failed
    case nospace
}
