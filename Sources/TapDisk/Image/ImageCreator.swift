import CLibAIO
import Glibc

/// `tapdiskd create PATH --size SIZE --preallocate off|falloc|full`: makes a new raw image.
///
/// Like `qemu-img create -f raw`, with two deliberate differences:
/// - it never overwrites: the file is created with `O_CREAT | O_EXCL`, so a typo in PATH cannot
///   destroy a guest's disk;
/// - it never leaves a half-made image behind. A failed `posix_fallocate` on ext4 keeps the blocks
///   it allocated (measured: it returns 28 and the filesystem stays full), so a failed
///   preallocation would otherwise leave the filesystem full and every other image on it one
///   write away from ENOSPC. On any failure after the file was created, it is unlinked before the
///   errno is thrown.
///
/// On success the file and its directory entry are both fsynced, so a crash right after `create`
/// returns cannot lose the image or leave it with the wrong size.
package enum ImageCreator {
    /// How the image's blocks are reserved up front.
    package enum Preallocation: String, CaseIterable, Sendable {
        /// `ftruncate` only: a sparse file; blocks are allocated on first write (may ENOSPC later).
        case off
        /// `posix_fallocate`: blocks reserved as unwritten extents; fast, no later ENOSPC for
        /// overwrites on filesystems that support it.
        case falloc
        /// Zeros written in 1 MiB chunks: every block really allocated and initialised, also on
        /// filesystems (or thin storage below them) where fallocate is only a promise.
        case full
    }

    /// A refusal or failure with the errno a script can act on and a message an operator can read.
    package struct CreationError: Error, Equatable, Sendable, CustomStringConvertible {
        package var errno: Errno
        package var message: String
        package var description: String { message }
    }

    /// The unit zero writes are done in: large enough to be fast, small enough to keep memory low.
    package static let chunkSize = 1 << 20

    /// Creates `path` of exactly `sizeBytes` bytes (mode 0600: images hold guest data).
    ///
    /// - Throws: `CreationError` with `EINVAL` for a size that is zero or not a multiple of 512,
    ///   `EFBIG` for a size beyond `off_t`, `EEXIST` when `path` exists, otherwise the errno of the
    ///   failing call (`ENOSPC`, `EDQUOT`, `EIO`, ...); in those cases the file has been removed.
    /// - Parameter progress: called with the bytes written so far after each chunk of a `full`
    ///   preallocation (which can take minutes); the final `fsync` follows the last call.
    package static func create(
        path: String, sizeBytes: UInt64, preallocation: Preallocation, progress: ((UInt64) -> Void)? = nil
    ) throws(CreationError) {
        try validate(sizeBytes: sizeBytes)

        // O_RDWR, not O_WRONLY: glibc's posix_fallocate emulation (filesystems without
        // fallocate) reads each block before writing it.
        let fd = clibaio_open(path, O_RDWR | O_CREAT | O_EXCL | clibaio_O_CLOEXEC, 0o600)
        if fd < 0 {
            let e = Errno(rawValue: -fd)
            if e.rawValue == EEXIST {
                throw CreationError(
                    errno: e,
                    message: "\(path) already exists; refusing to overwrite it (remove it first if you mean to)")
            }
            throw CreationError(errno: e, message: "cannot create \(path): \(e)")
        }

        do throws(CreationError) {
            try fill(fd: fd, path: path, sizeBytes: sizeBytes, preallocation: preallocation, progress: progress)
            if fsync(fd) != 0 {
                let e = Errno.current
                throw CreationError(errno: e, message: "cannot fsync \(path): \(e)")
            }
        } catch {
            close(fd)
            removeAndSyncDirectory(path)
            throw CreationError(errno: error.errno, message: error.message + "; the partial file was removed")
        }
        if close(fd) != 0 {
            let e = Errno.current
            removeAndSyncDirectory(path)
            throw CreationError(errno: e, message: "cannot close \(path): \(e); the partial file was removed")
        }
        do throws(Errno) {
            try syncDirectory(of: path)
        } catch {
            removeAndSyncDirectory(path)
            throw CreationError(
                errno: error, message: "cannot fsync the directory of \(path): \(error); the file was removed")
        }
    }

    /// The size checks of `create`, for callers that judge a size before touching anything
    /// (the command line reports a bad `--size` as a usage error): `EINVAL` for zero or a size
    /// that is not a multiple of 512, `EFBIG` beyond `off_t`.
    package static func validate(sizeBytes: UInt64) throws(CreationError) {
        guard sizeBytes > 0 else {
            throw CreationError(
                errno: Errno(rawValue: EINVAL), message: "invalid size 0: an image needs at least one 512-byte sector")
        }
        guard sizeBytes % 512 == 0 else {
            throw CreationError(
                errno: Errno(rawValue: EINVAL),
                message: "invalid size \(sizeBytes): must be a multiple of 512 bytes (the sector size)")
        }
        guard sizeBytes <= UInt64(Int64.max) else {
            throw CreationError(
                errno: Errno(rawValue: EFBIG), message: "invalid size \(sizeBytes): too large for a file")
        }
    }

    private static func fill(
        fd: Int32, path: String, sizeBytes: UInt64, preallocation: Preallocation, progress: ((UInt64) -> Void)?
    ) throws(CreationError) {
        let size = Int64(sizeBytes)
        switch preallocation {
        case .off:
            if ftruncate(fd, off_t(size)) != 0 {
                let e = Errno.current
                throw CreationError(errno: e, message: "cannot set the size of \(path) to \(sizeBytes) bytes: \(e)")
            }
        case .falloc:
            let rc = clibaio_posix_fallocate(fd, 0, size)
            if rc < 0 {
                let e = Errno(rawValue: -rc)
                throw CreationError(errno: e, message: "cannot preallocate \(sizeBytes) bytes for \(path): \(e)")
            }
        case .full:
            let zeros = [UInt8](repeating: 0, count: chunkSize)
            var offset: Int64 = 0
            while offset < size {
                let want = Int(min(Int64(chunkSize), size - offset))
                let n = zeros.withUnsafeBytes { pwrite(fd, $0.baseAddress!, want, off_t(offset)) }
                if n < 0 {
                    if errno == EINTR { continue }
                    let e = Errno.current
                    throw CreationError(errno: e, message: "cannot write zeros to \(path) at offset \(offset): \(e)")
                }
                if n == 0 {  // Not expected from a regular file; treat as out of space, never spin.
                    throw CreationError(
                        errno: Errno(rawValue: ENOSPC),
                        message: "cannot write zeros to \(path) at offset \(offset): no progress")
                }
                offset += Int64(n)
                progress?(UInt64(offset))
            }
        }
    }

    /// Best effort: the caller is already reporting the original error.
    private static func removeAndSyncDirectory(_ path: String) {
        _ = unlink(path)
        try? syncDirectory(of: path)
    }

    /// fsync of the directory holding `path`, so the new (or removed) entry is durable.
    private static func syncDirectory(of path: String) throws(Errno) {
        let dir = parentDirectory(of: path)
        let dfd = clibaio_open(dir, O_RDONLY | O_DIRECTORY | clibaio_O_CLOEXEC, 0)
        if dfd < 0 { throw Errno(rawValue: -dfd) }
        defer { close(dfd) }
        if fsync(dfd) != 0 { throw Errno.current }
    }

    /// `dirname(3)` without modifying its argument: "a/b" → "a", "b" → ".", "/b" → "/".
    package static func parentDirectory(of path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1, trimmed.last == "/" { trimmed = trimmed.dropLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        var dir = trimmed[..<slash]
        while dir.count > 1, dir.last == "/" { dir = dir.dropLast() }
        return dir.isEmpty ? "/" : String(dir)
    }
}
