/// Why a vhost-user connection cannot go on. Every case ends the connection: the stream has no
/// resynchronisation point, and a front-end that breaks the protocol once is not trusted again.
package enum VhostUserError: Error, Equatable, Sendable {
    /// A system call on the socket failed.
    case system(Errno)
    /// The peer closed the socket in the middle of a message.
    case truncated
    /// The header's version bits are not 1.
    case badVersion(flags: UInt32)
    /// The front-end sent a message with the reply bit set.
    case unexpectedReply(request: UInt32)
    case unknownRequest(UInt32)
    /// The header's size exceeds any payload this backend accepts (checked before reading it).
    case payloadTooLarge(request: UInt32, size: UInt32)
    /// The payload size is not the one the request type defines.
    case badPayloadSize(VhostUserRequest, size: Int)
    /// The number of SCM_RIGHTS fds does not match the request (and, for vring fds, the no-fd bit).
    case badDescriptorCount(VhostUserRequest, count: Int)
    /// SET_MEM_TABLE's nregions is 0, above 8, or disagrees with the payload size.
    case badRegionCount(UInt32)
    /// GET_CONFIG / SET_CONFIG size above 256 or disagreeing with the payload size.
    case badConfigSize(UInt32)
    /// A payload was asked for as a type its request does not carry (a caller bug).
    case wrongPayloadKind(VhostUserRequest)
}
