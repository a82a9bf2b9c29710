import FSSnapshot
import Foundation
import ProcessCR

/// Listing and deleting snapshots.
public enum Snapshots {
    public static func delete(store: Store, id: SnapshotID) throws {
        let c = try Container(store: store, name: id.container)
        try c.mustExist()
        let lock = try c.lock()
        defer { lock.release() }
        _ = try c.manifest(id.number)
        try deleteLocked(c, id.number)
    }

    /// Removes the manifest first, so a half-deleted snapshot is never listed.
    static func deleteLocked(_ c: Container, _ n: Int) throws {
        let dir = c.snapshotDir(n)
        try Sys.unlink("\(dir)/manifest.json")
        try Sys.fsyncDirectory(dir)
        if c.store.backend.isVolume("\(dir)/fs") {
            try c.store.backend.deleteVolume("\(dir)/fs")
        }
        try Sys.removeTree(dir)
    }
}
