import CLibAIO
import Glibc

/// Data that `O_DIRECT` cannot take where it lies: a guest's buffer not aligned to the sector
/// size. Handing it to the kernel would fail with EINVAL, which would then look like a failure
/// of the image (an `io-error`, and under `--on-error pause` a pause any guest could cause at
/// will). QEMU copies such buffers through an aligned one; so does this, synchronously, through
/// one page-aligned bounce buffer per attachment. Linux guests send sector-aligned buffers, so
/// this path is for odd or hostile guests: correct, and allowed to be slow.
extension Engine {
    /// Moves the untransferred rest of `index` through the bounce buffer with `pread`/`pwrite`
    /// on the image, then reports the result to `complete` as a kernel completion would.
    func bounceTransfer(_ index: Int) {
        let r = table.records[index]
        let remaining = r.dataBytes - r.transferred
        guard remaining > 0, let buffer = bounceBufferForUse(), remaining <= bounceCapacity else {
            complete(index, result: -Int64(EIO))
            return
        }
        let sources = table.sources + index * RequestTable.segmentsPerRequest
        let offset = Int64(r.sector) * 512 + Int64(r.transferred)
        if r.operation != .read {
            walk(sources, count: r.segmentCount, skip: r.transferred, bytes: remaining) { guest, at, n in
                memcpy(buffer + at, guest, n)
            }
        }
        var done = 0
        var error: Int32 = 0
        while done < remaining {
            let n =
                r.operation == .read
                ? pread(image.fd.rawValue, buffer + done, remaining - done, off_t(offset) + off_t(done))
                : pwrite(image.fd.rawValue, buffer + done, remaining - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                error = errno
                break
            }
            if n == 0 { break }
            done += n
        }
        if r.operation == .read && done > 0 {
            walk(sources, count: r.segmentCount, skip: r.transferred, bytes: done) { guest, at, n in
                memcpy(guest, buffer + at, n)
            }
        }
        bouncedBytesThisService += remaining
        // A failure after some bytes moved is still a failure of the request.
        var result = error != 0 ? -Int64(error) : Int64(done)
        #if TAPDISK_FAULT_INJECTION
            result = injectFault(index, into: result, read: r.operation == .read, offset: offset)
        #endif
        complete(index, result: result)
    }

    #if TAPDISK_FAULT_INJECTION
        /// The AIO completion seam applied to a bounced transfer, as if it had been an iocb, so
        /// the fault tests (`TAPDISK_FAULTS`) reach this path too.
        private func injectFault(_ index: Int, into result: Int64, read: Bool, offset: Int64) -> Int64 {
            let cb = table.iocbs + index
            if read {
                clibaio_prep_preadv(cb, image.fd.rawValue, nil, 0, offset, aio.eventFD.rawValue, UInt64(index))
            } else {
                clibaio_prep_pwritev(cb, image.fd.rawValue, nil, 0, offset, aio.eventFD.rawValue, UInt64(index))
            }
            var event = io_event()
            event.obj = cb
            clibaio_event_set_res(&event, result)
            aio.faults.interceptCompletion(&event)
            return clibaio_event_res(&event)
        }
    #endif

    /// Calls `body(guestAddress, bufferOffset, length)` over `bytes` bytes of the source iovecs
    /// after the first `skip`.
    private func walk(
        _ sources: UnsafeMutablePointer<iovec>, count: Int, skip: Int, bytes: Int,
        _ body: (UnsafeMutableRawPointer, Int, Int) -> Void
    ) {
        var skip = skip
        var at = 0
        for i in 0..<count where at < bytes {
            let s = sources[i]
            guard let base = s.iov_base else { continue }
            if skip >= s.iov_len {
                skip -= s.iov_len
                continue
            }
            let n = Swift.min(s.iov_len - skip, bytes - at)
            body(base + skip, at, n)
            at += n
            skip = 0
        }
    }

    private func bounceBufferForUse() -> UnsafeMutableRawPointer? {
        if let bounceBuffer { return bounceBuffer }
        guard bounceCapacity > 0 else { return nil }
        var p: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&p, 4096, (bounceCapacity + 4095) & ~4095) == 0 else { return nil }
        bounceBuffer = p
        return p
    }

    func releaseBounceBuffer() {
        free(bounceBuffer)
        bounceBuffer = nil
    }
}
