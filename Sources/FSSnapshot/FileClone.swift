import CLibmount
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Copies of open files that cost no bytes where the filesystem can share
/// extents (FICLONE), and a hole-preserving copy where it cannot.
public enum FileClone {
    public enum How: String, Codable, Sendable {
        /// The copy shares the original's extents: no data was copied.
        case reflinked
        /// The data was copied (holes kept as holes).
        case copied
    }

    /// lseek whence values for sparse files (Linux; not exported by Glibc's module).
    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    /// Makes the empty file `dst` share the extents of `src`. Throws with the
    /// errno FICLONE gave (EXDEV across filesystems, EOPNOTSUPP without
    /// reflink support, EINVAL for some special files).
    public static func reflink(to dst: Int32, from src: Int32, _ subject: String) throws {
        try Sys.check("FICLONE", subject) { crsnap_ficlone(dst, src) }
    }

    /// Copies the data of `src` into the empty file `dst`, skipping holes
    /// (SEEK_DATA/SEEK_HOLE), and sets its size. Returns the bytes copied.
    @discardableResult
    public static func copy(to dst: Int32, from src: Int32, _ subject: String) throws -> UInt64 {
        var st = Glibc.stat()
        try Sys.check("fstat", subject) { fstat(src, &st) }
        let size = off_t(st.st_size)
        var copied: UInt64 = 0
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        var pos: off_t = 0
        while pos < size {
            let data = lseek(src, pos, seekData)
            if data < 0 {
                if errno == ENXIO { break }  // only a hole is left
                throw SystemError("lseek SEEK_DATA", subject, errno: errno)
            }
            var hole = lseek(src, data, seekHole)
            if hole < 0 { hole = size }
            var at = data
            while at < hole {
                let want = Int(min(off_t(buf.count), hole - at))
                let n = buf.withUnsafeMutableBytes { pread(src, $0.baseAddress, want, at) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw SystemError("read", subject, errno: errno)
                }
                if n == 0 { break }
                var done = 0
                while done < n {
                    let w = buf.withUnsafeBytes { pwrite(dst, $0.baseAddress! + done, n - done, at + off_t(done)) }
                    if w < 0 {
                        if errno == EINTR { continue }
                        throw SystemError("write", subject, errno: errno)
                    }
                    done += w
                }
                at += off_t(n)
                copied += UInt64(n)
            }
            pos = hole
        }
        try Sys.check("ftruncate", subject) { ftruncate(dst, size) }
        return copied
    }

    /// Makes the new file `path` a copy of the open file `src`: its extents
    /// cloned where possible, else its data copied, unless `allowReflink` is
    /// false. Where FICLONE fails across filesystems (EXDEV), `cloneAcross`
    /// gets the new file to clone into another way; if it throws, the data
    /// is copied. The file gets `mode`, `uid` and `gid`. Returns how, and the
    /// bytes copied (0 when reflinked).
    public static func file(at path: String, from src: Int32, mode: mode_t = 0o600, uid: uid_t? = nil, gid: gid_t? = nil,
                            allowReflink: Bool = true, cloneAcross: ((Int32) throws -> Void)? = nil) throws -> (How, UInt64) {
        let dst = try Sys.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o600)
        defer { Sys.close(dst) }
        var how = How.copied
        var copied: UInt64 = 0
        if allowReflink, crsnap_ficlone(dst, src) == 0 {
            how = .reflinked
        } else if allowReflink, errno == EXDEV, let cloneAcross, (try? cloneAcross(dst)) != nil {
            how = .reflinked
        } else {
            copied = try copy(to: dst, from: src, path)
        }
        if let uid, let gid { try Sys.check("fchown", path) { fchown(dst, uid, gid) } }
        try Sys.check("fchmod", path) { fchmod(dst, mode & 0o7777) }
        return (how, copied)
    }
}
