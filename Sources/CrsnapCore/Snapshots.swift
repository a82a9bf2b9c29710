import FSSnapshot
import Foundation
import ProcessCR

/// Listing and deleting snapshots.
public enum Snapshots {
    public static func delete(store: Store, id: SnapshotID) throws {
        try Container.locked(store: store, name: id.container) { c in
            guard Sys.exists("\(c.snapshotDir(id.number))/manifest.json") else {
                throw CrsnapError(.notFound, "no snapshot \(id) in store \(store.path)")
            }
            try deleteLocked(c, id.number)
        }
    }

    /// Journaled; removes the manifest first, so a half-deleted snapshot is
    /// never listed, and the next command finishes an interrupted delete.
    static func deleteLocked(_ c: Container, _ n: Int) throws {
        let dir = c.snapshotDir(n)
        try JSON.write(Journal(op: "delete", started: Date(), path: dir), to: c.journalPath)
        try Sys.unlink("\(dir)/manifest.json")
        try Sys.fsyncDirectory(dir)
        try Faults.check("delete.unlisted")
        try removeDirectory(c, dir)
        try Sys.unlink(c.journalPath)
    }

    static func removeDirectory(_ c: Container, _ dir: String) throws {
        try removeSnapshotDir(c.store.backend, dir)
    }

    /// Deletes a snapshot (or staging) directory with its subvolumes.
    static func removeSnapshotDir(_ backend: SnapshotBackend, _ dir: String) throws {
        // A take's images staged in memory: the tmpfs goes first.
        try ImageStaging.unmountIfMounted("\(dir)/images")
        if backend.isVolume("\(dir)/fs") { try backend.deleteVolume("\(dir)/fs") }
        let volumes = "\(dir)/volumes"
        for v in (try? FileManager.default.contentsOfDirectory(atPath: volumes)) ?? [] where backend.isVolume("\(volumes)/\(v)") {
            try backend.deleteVolume("\(volumes)/\(v)")
        }
        try Sys.removeTree(dir)
    }
}

extension Snapshots {
    /// Snapshot `n`'s filesystem half on disk (its fs volume, the volumes
    /// snapshotted with it, the unlinked files captured): all of its data
    /// extents and those no other snapshot or the live container shares,
    /// measured now (deleting another snapshot can make more of them
    /// exclusive). nil where the filesystem cannot tell.
    public static func filesystemBytes(_ c: Container, _ n: Int) -> ExtentUsage.Bytes? {
        let dir = c.snapshotDir(n)
        let volumes = ((try? FileManager.default.contentsOfDirectory(atPath: "\(dir)/volumes")) ?? []).sorted()
        let roots = ["\(dir)/fs"] + volumes.map { "\(dir)/volumes/\($0)" } + ["\(dir)/unlinked"]
        return ExtentUsage.measure(roots.filter(Sys.exists))
    }
}

extension Snapshots {
    /// The identity of snapshot `n`'s files across stores: the uuid a
    /// btrfs receive of them records (their own received uuid when they
    /// were received themselves). nil on a store without subvolumes.
    public static func identity(_ c: Container, _ n: Int) -> String? {
        (try? Btrfs.identity("\(c.snapshotDir(n))/fs"))?.acrossStores
    }
}
