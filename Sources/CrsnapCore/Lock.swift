import CLibmount
import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An exclusive flock on a file; released on close or process exit.
public final class FileLock {
    private var fd: Int32

    /// Waits for the lock (a take or rollback on the same container finishes
    /// first); with `wait` false, throws EWOULDBLOCK when it is held.
    public init(path: String, wait: Bool = true) throws {
        fd = try Sys.open(path, O_RDWR | O_CREAT | O_CLOEXEC, mode: 0o600)
        let fd = self.fd
        do {
            try Sys.check("flock", path) { flock(fd, wait ? LOCK_EX : LOCK_EX | LOCK_NB) }
        } catch {
            Sys.close(fd)
            self.fd = -1
            throw error
        }
    }

    public func release() {
        if fd >= 0 {
            Sys.close(fd)
            fd = -1
        }
    }

    deinit { release() }
}
