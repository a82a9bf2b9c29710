import CLibmount
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What a snapshot's files cost on disk, from the extents the filesystem
/// reports for them (FIEMAP): a snapshot shares most of its extents with the
/// live volume and with the other snapshots, and only the extents no one
/// else holds come free when it is deleted. That is what `btrfs filesystem
/// du` calls exclusive, read the same way, without enabling quotas
/// (qgroups) on the user's filesystem. On a copy store the same call tells
/// plain copies (nothing shared) from reflinked ones.
public enum ExtentUsage {
    public struct Bytes: Equatable, Sendable {
        /// Every data extent of the files.
        public var total: UInt64
        /// The extents no other file or snapshot shares.
        public var exclusive: UInt64
    }

    /// The extents of the regular files below each of `roots` (each one
    /// filesystem: nested subvolumes and mounts are not entered), summed; nil
    /// when the filesystem cannot tell (no FIEMAP) or a root cannot be read.
    public static func measure(_ roots: [String]) -> Bytes? {
        var sum = Bytes(total: 0, exclusive: 0)
        for root in roots {
            var total: UInt64 = 0, exclusive: UInt64 = 0
            guard crsnap_extent_bytes(root, &total, &exclusive) == 0 else { return nil }
            sum.total += total
            sum.exclusive += exclusive
        }
        return sum
    }
}
