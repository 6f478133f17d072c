/// Why a disk is paused (§6.1). The first reason of a pause stays until the pause ends.
package enum PauseReason: String, Sendable {
    case operatorRequest = "operator"
    case nospace
    case ioError = "io-error"
}
