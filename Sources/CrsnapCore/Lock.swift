import CLibmount
import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An exclusive flock on a file; released on close or process exit.
public final class FileLock {
    private var fd: Int32

    /// Waits for the lock (a take or rollback on the same container finishes first).
    public init(path: String) throws {
        fd = try Sys.open(path, O_RDWR | O_CREAT, mode: 0o600)
        try Sys.check("flock", path) { flock(fd, LOCK_EX) }
    }

    public func release() {
        if fd >= 0 {
            Sys.close(fd)
            fd = -1
        }
    }

    deinit { release() }
}
