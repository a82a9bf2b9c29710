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
        try removeSnapshotDir(c.store.backend, dir)
    }

    /// Deletes a snapshot (or staging) directory with its subvolumes.
    static func removeSnapshotDir(_ backend: SnapshotBackend, _ dir: String) throws {
        if backend.isVolume("\(dir)/fs") { try backend.deleteVolume("\(dir)/fs") }
        let volumes = "\(dir)/volumes"
        for v in (try? FileManager.default.contentsOfDirectory(atPath: volumes)) ?? [] where backend.isVolume("\(volumes)/\(v)") {
            try backend.deleteVolume("\(volumes)/\(v)")
        }
        try Sys.removeTree(dir)
    }
}
