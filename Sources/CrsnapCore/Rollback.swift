import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// rollback: stop the tasks, put the snapshot's files in place, restore the
/// tasks from the images taken at the same instant.
public enum Rollback {
    /// Returns the host pid of the restored init.
    public static func rollback(store: Store, id: SnapshotID) throws -> pid_t {
        let c = try Container(store: store, name: id.container)
        try c.mustExist()
        let lock = try c.lock()
        defer { lock.release() }
        try Recovery.finishInterrupted(c)
        // Images are a trust boundary: only complete snapshots whose images
        // match the checksums recorded at take time are restored.
        try Verify.require(c, id.number, doing: "rollback to \(id)")
        _ = try c.config()
        let cg = try c.cgroup()
        _ = try CriuCheck.usable(for: "rollback to \(id)")
        try Faults.check("rollback.verified")

        let revert = Revert()
        var stopped = false
        do {
            return try revert.run {
                try JSON.write(Journal(op: "rollback", started: Date(), path: aside(c), snapshot: id.number), to: c.journalPath)
                revert.push("end journal") { try Sys.unlink(c.journalPath) }
                // The new volume first, while the tasks still run: a full store
                // fails here, with nothing changed.
                try cloneSnapshot(c, id.number)
                revert.push("delete \(next(c))") {
                    if store.backend.isVolume(next(c)) { try store.backend.deleteVolume(next(c)) }
                }
                try holdMonitor(c, revert: revert)
                stopped = true
                try cg.killAll()
                try Faults.check("rollback.killed")
                return try swapAndRestore(c, id.number, revert: revert)
            }
        } catch {
            var message = "rollback to \(id) failed: \(error)\n"
            if !"\(error)".contains("No space left"), let hint = Space.hint(store) { message += hint + "\n" }
            throw CrsnapError(.failed, message + (stopped
                ? "the container's files are as they were before the rollback; its processes were stopped"
                : "nothing was changed; the container runs on"))
        }
    }

    static func aside(_ c: Container) -> String { "\(c.dir)/fs.prev" }
    static func next(_ c: Container) -> String { "\(c.dir)/fs.next" }

    /// A writable clone of snapshot `n`'s volume at fs.next.
    static func cloneSnapshot(_ c: Container, _ n: Int) throws {
        let backend = c.store.backend
        if backend.isVolume(next(c)) { try backend.deleteVolume(next(c)) }
        try backend.snapshot("\(c.snapshotDir(n))/fs", to: next(c), readOnly: false)
    }

    /// The monitor must live through the kill: it is the parent of the
    /// restored tree and holds the container's output pipe.
    static func holdMonitor(_ c: Container, revert: Revert) throws {
        if c.monitorAlive {
            let r = try MonitorChannel.request(dir: c.dir, "hold")
            guard r.hasPrefix("ok") else { throw CrsnapError(.failed, "rollback of \(c.name): the monitor refused: \(r)") }
        } else {
            try Lifecycle.spawnMonitor(c, idle: true)
        }
        revert.push("release the monitor") { _ = try MonitorChannel.request(dir: c.dir, "release") }
    }

    /// With the tree gone and the clone at fs.next: the current volume goes
    /// aside (unless it already is), the clone takes its place, the root is
    /// mounted and the monitor restores the tree; then the old volume is
    /// deleted and the journal ended. Undone by `revert` on failure.
    static func swapAndRestore(_ c: Container, _ n: Int, revert: Revert) throws -> pid_t {
        let backend = c.store.backend
        let config = try c.config()
        let m = try c.manifest(n)
        let aside = aside(c)
        if Mounts.isMountPoint(c.rootMount) { try unmountRoot(c) }
        revert.push("mount the previous root") {
            try ContainerRoot.mount(volume: c.volume, kind: config.kind, at: c.rootMount)
        }
        // Keep the current files reachable until the restore has succeeded.
        if !backend.isVolume(aside) { try Sys.rename(c.volume, aside) }
        revert.push("put the previous volume back") { try Sys.rename(aside, c.volume) }
        try Faults.check("rollback.aside")
        try Sys.rename(next(c), c.volume)
        revert.push("delete the new volume") { try backend.deleteVolume(c.volume) }
        try Faults.check("rollback.cloned")
        try ContainerRoot.mount(volume: c.volume, kind: config.kind, at: c.rootMount)
        revert.push("unmount the new root") { try unmountRoot(c) }
        try Faults.check("rollback.restore")
        let images = "\(c.snapshotDir(n))/images"
        let request = ["restore", images, c.rootMount, m.log_pipe, m.id].joined(separator: "\n")
        let reply = try MonitorChannel.request(dir: c.dir, request, afterSend: { try Faults.check("rollback.restoring") })
        guard reply.hasPrefix("ok "), let pid = pid_t(reply.dropFirst(3)) else {
            throw CrsnapError(.failed, "rollback to \(m.id) failed: \(reply.hasPrefix("err ") ? String(reply.dropFirst(4)) : reply)")
        }
        try Faults.check("rollback.restored")
        try backend.deleteVolume(aside)
        try Sys.unlink(c.journalPath)
        return pid
    }

    static func unmountRoot(_ c: Container) throws {
        do {
            try Mounts.unmount(c.rootMount)
        } catch {
            try Mounts.unmount(c.rootMount, lazy: true)
        }
    }
}
