import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Free space on the store: a CRIU dump that ran out of room cannot say so in
/// its own log (the log is on the same full filesystem), so a failed
/// operation checks the store and says when it is (nearly) full.
enum Space {
    static let nearlyFull: UInt64 = 64 << 20

    static func freeBytes(_ path: String) -> UInt64? {
        var s = statvfs()
        guard statvfs(path, &s) == 0 else { return nil }
        return UInt64(s.f_bavail) * UInt64(s.f_frsize)
    }

    /// Bytes in use on the filesystem of `path`.
    static func usedBytes(_ path: String) -> UInt64? {
        var s = statvfs()
        guard statvfs(path, &s) == 0 else { return nil }
        return UInt64(s.f_blocks - s.f_bfree) * UInt64(s.f_frsize)
    }

    /// A sentence for an error message when the store has less room than
    /// `needed` (or 64 MiB), else nil.
    static func hint(_ store: Store, needed: UInt64 = 0) -> String? {
        guard let free = freeBytes(store.root), free < max(nearlyFull, needed) else { return nil }
        return "the store \(store.root) is nearly full (\(free >> 20) MiB free): most likely the failure is No space left on device (ENOSPC); free some space (crsnap delete old snapshots)"
    }
}
