import CLibAIO

/// Encodes the back-end's answers: the request number echoed, flags = version 1 | reply bit.
package enum VhostUserReply {
    /// GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, GET_STATUS, and
    /// the REPLY_ACK answer (0 = success, non-zero = failure).
    package static func u64(_ request: VhostUserRequest, _ value: UInt64) -> [UInt8] {
        var bytes = header(request, size: 8)
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
        return bytes
    }

    /// GET_VRING_BASE: the ring index and its last available index.
    package static func vringState(_ request: VhostUserRequest, _ state: VhostUserVringState) -> [UInt8] {
        var bytes = header(request, size: 8)
        withUnsafeBytes(of: state.index.littleEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: state.num.littleEndian) { bytes.append(contentsOf: $0) }
        return bytes
    }

    /// GET_CONFIG: the request's offset/size/flags echoed, then `size` bytes of config space.
    /// The caller passes exactly `access.size` bytes (`VirtioBlkConfig.window` does).
    package static func config(_ access: VhostUserConfigAccess, window: [UInt8]) -> [UInt8] {
        var bytes = header(.getConfig, size: 12 + window.count)
        for value in [access.offset, UInt32(window.count), access.flags] {
            withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
        }
        bytes.append(contentsOf: window)
        return bytes
    }

    /// GET_INFLIGHT_FD: the region's size and offset (the memfd travels with it).
    package static func inflight(_ d: VhostUserInflightDescription) -> [UInt8] {
        var bytes = header(.getInflightFD, size: VhostUserInflightDescription.byteCount)
        withUnsafeBytes(of: d.mmapSize.littleEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: d.mmapOffset.littleEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: d.queueCount.littleEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: d.queueSize.littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: [0, 0, 0, 0])
        return bytes
    }

    /// REPLY_ACK for a request sent with the need-reply flag.
    package static func ack(_ request: VhostUserRequest, success: Bool) -> [UInt8] {
        u64(request, success ? 0 : 1)
    }

    private static func header(_ request: VhostUserRequest, size: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(VhostUserHeader.byteCount + size)
        VhostUserHeader.reply(to: request.rawValue, size: size).append(to: &bytes)
        return bytes
    }

    /// Writes a whole encoded message, with `descriptor` attached when it is not -1 (only
    /// GET_INFLIGHT_FD's reply carries one).
    package static func send(_ bytes: [UInt8], on socket: Int32, descriptor: Int32 = -1) throws(Errno) {
        let fd = descriptor
        let n = bytes.withUnsafeBytes { b in
            withUnsafePointer(to: fd) { clibaio_vhost_send(socket, b.baseAddress, b.count, $0, fd >= 0 ? 1 : 0) }
        }
        if n < 0 { throw Errno(rawValue: Int32(-n)) }
    }
}
