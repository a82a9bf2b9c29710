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
        let m = try c.manifest(id.number)
        let snapDir = c.snapshotDir(id.number)
        let images = "\(snapDir)/images"
        let snapFs = "\(snapDir)/fs"
        guard store.backend.isVolume(snapFs) else {
            throw CrsnapError(.failed, "snapshot \(id) is damaged: its filesystem snapshot \(snapFs) is missing; nothing was changed")
        }
        guard Sys.exists("\(images)/inventory.img") else {
            throw CrsnapError(.failed, "snapshot \(id) is damaged: \(images)/inventory.img is missing; nothing was changed")
        }
        let config = try c.config()
        let cg = try c.cgroup()
        _ = try Criu.locate()

        // The monitor must live through the kill: it is the parent of the
        // restored tree and holds the container's output pipe.
        if c.monitorAlive {
            let r = try MonitorChannel.request(dir: c.dir, "hold")
            guard r.hasPrefix("ok") else { throw CrsnapError(.failed, "rollback \(id): the monitor refused: \(r)") }
        } else {
            try Lifecycle.spawnMonitor(c, idle: true)
        }

        let aside = "\(c.dir)/fs.prev"
        let revert = Revert()
        revert.push("release the monitor") { _ = try MonitorChannel.request(dir: c.dir, "release") }
        do {
            return try revert.run {
                try cg.killAll()
                try JSON.write(Journal(op: "rollback", started: Date(), path: aside), to: c.journalPath)
                revert.push("end journal") { try Sys.unlink(c.journalPath) }
                if Mounts.isMountPoint(c.rootMount) { try unmountRoot(c) }
                revert.push("mount the previous root") {
                    try ContainerRoot.mount(volume: c.volume, kind: config.kind, at: c.rootMount)
                }
                // Keep the current files reachable until the restore has succeeded.
                try Sys.rename(c.volume, aside)
                revert.push("put the previous volume back") { try Sys.rename(aside, c.volume) }
                try store.backend.snapshot(snapFs, to: c.volume, readOnly: false)
                revert.push("delete the new volume") { try store.backend.deleteVolume(c.volume) }
                try ContainerRoot.mount(volume: c.volume, kind: config.kind, at: c.rootMount)
                revert.push("unmount the new root") { try unmountRoot(c) }
                try Faults.check("rollback.restore")
                let request = ["restore", images, c.rootMount, m.log_pipe, id.description].joined(separator: "\n")
                let reply = try MonitorChannel.request(dir: c.dir, request)
                guard reply.hasPrefix("ok "), let pid = pid_t(reply.dropFirst(3)) else {
                    throw CrsnapError(.failed, "rollback to \(id) failed: \(reply.hasPrefix("err ") ? String(reply.dropFirst(4)) : reply)")
                }
                try store.backend.deleteVolume(aside)
                try Sys.unlink(c.journalPath)
                return pid
            }
        } catch {
            throw CrsnapError(.failed, "\(error)\nthe container's files are as they were before the rollback; its processes were stopped")
        }
    }

    static func unmountRoot(_ c: Container) throws {
        do {
            try Mounts.unmount(c.rootMount)
        } catch {
            try Mounts.unmount(c.rootMount, lazy: true)
        }
    }
}

/// Cleans up after an operation that was interrupted (crsnap killed).
enum Recovery {
    static func finishInterrupted(_ c: Container) throws {
        guard Sys.exists(c.journalPath) else { return }
        let j = try JSON.read(Journal.self, from: c.journalPath)
        let backend = c.store.backend
        switch j.op {
        case "take":
            // A take that did not finish is not listed (no manifest in place):
            // drop its staging directory.
            if backend.isVolume("\(j.path)/fs") { try backend.deleteVolume("\(j.path)/fs") }
            try Sys.removeTree(j.path)
            if let cg = try? c.cgroup(), cg.exists, cg.state() != "THAWED" { try cg.thaw() }
        case "rollback":
            // The previous volume is kept aside until the restore succeeded: if
            // it is still there, the rollback did not finish; put it back.
            if backend.isVolume(j.path) && !c.isRunning {
                if Mounts.isMountPoint(c.rootMount) { try Rollback.unmountRoot(c) }
                if backend.isVolume(c.volume) { try backend.deleteVolume(c.volume) }
                try Sys.rename(j.path, c.volume)
                let config = try c.config()
                try ContainerRoot.mount(volume: c.volume, kind: config.kind, at: c.rootMount)
            } else if backend.isVolume(j.path) {
                try backend.deleteVolume(j.path)
            }
        default:
            break
        }
        try Sys.unlink(c.journalPath)
    }
}
