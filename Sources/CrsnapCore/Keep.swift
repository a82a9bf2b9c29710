import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// Paths kept across rollback (`run --keep`): their contents when the tasks
/// are stopped replace the snapshot's, so logs written since the snapshot
/// survive it. They are outside the one instant by design.
enum Keep {
    static func within(_ path: String, _ kept: [String]) -> String? {
        kept.first { path == $0 || path.hasPrefix($0 + "/") }
    }

    /// Refuses, before anything changes, a rollback CRIU would refuse after
    /// the kill: a file under a kept path that the snapshot's tasks hold open
    /// (other than write-only with O_APPEND, a log) whose size is no longer
    /// the one recorded. CRIU restores such a file only at that size.
    static func check(_ c: Container, _ n: Int, _ config: ContainerConfig) throws {
        guard let kept = config.keep, !kept.isEmpty, Mounts.isMountPoint(c.rootMount) else { return }
        for f in try FilesImage.regularFiles(in: "\(c.snapshotDir(n))/images") {
            guard let size = f.size, let k = within(f.path, kept) else { continue }
            var st = Glibc.stat()
            let now = lstat(c.rootMount + f.path, &st) == 0 ? UInt64(st.st_size) : nil
            guard now != size else { continue }
            throw CrsnapError(.conflict, """
                cannot roll back to \(c.name)@\(n): \(f.path) is under --keep \(k) and the snapshot's processes \
                have it open (not as an append-only log), but its size is now \(now.map { "\($0) bytes" } ?? "gone") \
                where CRIU recorded \(size) bytes; CRIU restores such a file only at its recorded size. \
                nothing was changed
                """)
        }
    }

    /// With the snapshot's clone at `c.volume` and the files being replaced at
    /// `aside`: the kept paths' contents go from the latter to the former.
    static func carryOver(_ c: Container, _ config: ContainerConfig, from aside: String) throws -> Double {
        guard let kept = config.keep, !kept.isEmpty else { return 0 }
        let t = DispatchTime.now()
        try ContainerRoot.carryOver(kept, from: aside, into: c.volume, kind: config.kind)
        return milliseconds(since: t)
    }
}
