import Glibc

/// The error values an NBD reply may carry. The spec restricts the field to these eight (they
/// happen to equal Linux's errno numbers, but are defined by the protocol, not by the host).
package enum NBDError: UInt32, Sendable, Error, CaseIterable, CustomStringConvertible {
    case permission = 1
    case io = 5
    case noMemory = 12
    case invalid = 22
    case noSpace = 28
    case overflow = 75
    case notSupported = 95
    case shutdown = 108

    /// The NBD error for a failed I/O's errno, as the spec asks: `EDQUOT` and `EFBIG` are
    /// `NBD_ENOSPC` (so QEMU's `werror=enospc` sees the disk full whatever quota or limit hit
    /// first), `EROFS`/`EACCES` are `NBD_EPERM`, and an errno the protocol has no name for is
    /// `NBD_EIO` rather than a number the client would read as `NBD_EINVAL`.
    package init(errno: Int32) {
        switch errno {
        case EPERM, EACCES, EROFS: self = .permission
        case ENOSPC, EDQUOT, EFBIG: self = .noSpace
        case ENOMEM: self = .noMemory
        case EINVAL: self = .invalid
        case EOVERFLOW: self = .overflow
        case EOPNOTSUPP: self = .notSupported
        case ESHUTDOWN: self = .shutdown
        default: self = .io
        }
    }

    package var description: String {
        switch self {
        case .permission: "NBD_EPERM"
        case .io: "NBD_EIO"
        case .noMemory: "NBD_ENOMEM"
        case .invalid: "NBD_EINVAL"
        case .noSpace: "NBD_ENOSPC"
        case .overflow: "NBD_EOVERFLOW"
        case .notSupported: "NBD_ENOTSUP"
        case .shutdown: "NBD_ESHUTDOWN"
        }
    }
}
