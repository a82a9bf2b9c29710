import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

public struct RollbackResult: Codable {
    /// The snapshot now running.
    public var id: String
    /// The restored init's host pid.
    public var pid: Int32
    /// The snapshot rollback took of the state it replaced (for --undo), if it was running.
    public var pre_rollback: String?
}

/// What the last rollback replaced, so that `rollback --undo` can go back.
public enum Undo {
    struct Record: Codable {
        var preRollback: Int?
        var target: Int
        var at: Date
    }

    static func path(_ c: Container) -> String { "\(c.dir)/last-rollback.json" }

    /// The pre-rollback snapshot an undo of the last rollback needs, while it exists.
    public static func needed(_ c: Container) -> Int? {
        guard let r = try? JSON.read(Record.self, from: path(c)), let n = r.preRollback,
              c.snapshotNumbers().contains(n) else { return nil }
        return n
    }
}

/// rollback: stop the tasks, put the snapshot's files in place, restore the
/// tasks from the images taken at the same instant.
public enum Rollback {
    /// Rolls back to `id`. A running container is first checkpointed and
    /// stopped in one step (a "pre-rollback" snapshot), so the rollback can be
    /// undone and, should the restore fail, the state it replaced comes back.
    public static func rollback(store: Store, id: SnapshotID, preSnapshot: Bool = true) throws -> RollbackResult {
        let c = try Container(store: store, name: id.container)
        try c.mustExist()
        let lock = try c.lock()
        defer { lock.release() }
        try Recovery.finishInterrupted(c)
        return try rollbackLocked(c, id.number, preSnapshot: preSnapshot)
    }

    /// Goes back to the state the last rollback replaced.
    public static func undo(store: Store, name: String) throws -> RollbackResult {
        let c = try Container(store: store, name: name)
        try c.mustExist()
        let lock = try c.lock()
        defer { lock.release() }
        try Recovery.finishInterrupted(c)
        guard let n = Undo.needed(c) else {
            throw CrsnapError(.notFound, "container \"\(name)\" has no rollback to undo (none recorded, or its pre-rollback snapshot was deleted)")
        }
        return try rollbackLocked(c, n, preSnapshot: true)
    }

    /// Brings a stopped container back from its newest snapshot (after `take --stop`, or a reboot).
    public static func resume(store: Store, name: String) throws -> RollbackResult {
        let c = try Container(store: store, name: name)
        try c.mustExist()
        let lock = try c.lock()
        defer { lock.release() }
        try Recovery.finishInterrupted(c)
        if c.isRunning { throw CrsnapError(.conflict, "container \"\(name)\" is running; resume is for a stopped container") }
        guard let n = c.snapshotNumbers().last else {
            throw CrsnapError(.notFound, "container \"\(name)\" has no snapshot to resume from")
        }
        return try rollbackLocked(c, n, preSnapshot: false)
    }

    static func rollbackLocked(_ c: Container, _ n: Int, preSnapshot: Bool) throws -> RollbackResult {
        let id = "\(c.name)@\(n)"
        let m = try c.manifest(n)
        try checkComplete(c, n)
        let config = try c.config()
        let cg = try c.cgroup()
        try cg.create()
        _ = try Criu.locate()

        // The monitor must live through the kill: it is the parent of the
        // restored tree and holds the container's output pipe.
        if c.monitorAlive {
            let r = try MonitorChannel.request(dir: c.dir, "hold")
            guard r.hasPrefix("ok") else { throw CrsnapError(.failed, "rollback \(id): the monitor refused: \(r)") }
        } else {
            try Lifecycle.spawnMonitor(c, idle: true)
        }
        var pre: Int?
        if c.isRunning && preSnapshot {
            do {
                pre = try Take.takeLocked(c, TakeOptions(role: .preRollback, stop: true)).number
            } catch {
                _ = try? MonitorChannel.request(dir: c.dir, "release")
                throw CrsnapError(.failed, "rollback to \(id): could not snapshot the current state first, nothing was changed: \(error)")
            }
        }
        try cg.killAll()
        let pid: pid_t
        do {
            pid = try restoreInto(c, n, m, config, injectFault: true)
        } catch {
            guard let pre else {
                _ = try? MonitorChannel.request(dir: c.dir, "release")
                throw CrsnapError(.failed, "\(error)\nthe container's files are as they were before the rollback; its processes were stopped")
            }
            let preId = "\(c.name)@\(pre)"
            do {
                _ = try restoreInto(c, pre, try c.manifest(pre), config, injectFault: false)
            } catch let second {
                _ = try? MonitorChannel.request(dir: c.dir, "release")
                throw CrsnapError(.failed, "\(error)\nrestoring the state from before the rollback (\(preId)) failed too: \(second)\nthe container is stopped; its files are as before the rollback and \(preId) holds its processes")
            }
            throw CrsnapError(.failed, "\(error)\nthe container is back in the state from before the rollback (\(preId)), running")
        }
        try? JSON.write(Undo.Record(preRollback: pre, target: n, at: Date()), to: Undo.path(c))
        return RollbackResult(id: id, pid: pid, pre_rollback: pre.map { "\(c.name)@\($0)" })
    }

    /// Both halves of snapshot `n` are there.
    static func checkComplete(_ c: Container, _ n: Int) throws {
        let snapDir = c.snapshotDir(n)
        guard c.store.backend.isVolume("\(snapDir)/fs") else {
            throw CrsnapError(.failed, "snapshot \(c.name)@\(n) is damaged: its filesystem snapshot \(snapDir)/fs is missing; nothing was changed")
        }
        guard Sys.exists("\(snapDir)/images/inventory.img") else {
            throw CrsnapError(.failed, "snapshot \(c.name)@\(n) is damaged: \(snapDir)/images/inventory.img is missing; nothing was changed")
        }
    }

    /// With the tasks gone: swap in a writable clone of snapshot `n`'s volume
    /// and have the monitor restore its images. On failure the previous volume
    /// is put back and remounted.
    static func restoreInto(_ c: Container, _ n: Int, _ m: Manifest, _ config: ContainerConfig, injectFault: Bool) throws -> pid_t {
        let store = c.store
        let snapDir = c.snapshotDir(n)
        let aside = "\(c.dir)/fs.prev"
        let revert = Revert()
        return try revert.run {
            try JSON.write(Journal(op: "rollback", started: Date(), path: aside), to: c.journalPath)
            revert.push("end journal") { try Sys.unlink(c.journalPath) }
            if Mounts.isMountPoint(c.rootMount) { try unmountRoot(c) }
            revert.push("mount the previous root") {
                try ContainerRoot.mount(volume: c.volume, kind: config.kind, at: c.rootMount)
            }
            // Keep the current files reachable until the restore has succeeded.
            try Sys.rename(c.volume, aside)
            revert.push("put the previous volume back") { try Sys.rename(aside, c.volume) }
            try store.backend.snapshot("\(snapDir)/fs", to: c.volume, readOnly: false)
            revert.push("delete the new volume") { try store.backend.deleteVolume(c.volume) }
            try ContainerRoot.mount(volume: c.volume, kind: config.kind, at: c.rootMount)
            revert.push("unmount the new root") { try unmountRoot(c) }
            // Volumes snapshotted with this snapshot go back too; the replaced
            // ones stay beside them until the restore has succeeded.
            var replaced: [String] = []
            for v in m.volumes ?? [] where v.snapshotted {
                let saved = "\(snapDir)/volumes/\(v.key)"
                guard store.backend.isVolume(saved) else { continue }
                let prev = "\(v.host).crsnap-prev"
                if store.backend.isVolume(prev) { try store.backend.deleteVolume(prev) }
                try Sys.rename(v.host, prev)
                revert.push("put volume \(v.host) back") { try Sys.rename(prev, v.host) }
                try store.backend.snapshot(saved, to: v.host, readOnly: false)
                revert.push("delete the new volume \(v.host)") { try store.backend.deleteVolume(v.host) }
                replaced.append(prev)
            }
            if injectFault { try Faults.check("rollback.restore") }
            let request = ["restore", "\(snapDir)/images", c.rootMount, m.log_pipe, m.id].joined(separator: "\n")
            let reply = try MonitorChannel.request(dir: c.dir, request)
            guard reply.hasPrefix("ok "), let pid = pid_t(reply.dropFirst(3)) else {
                throw CrsnapError(.failed, "rollback to \(m.id) failed: \(reply.hasPrefix("err ") ? String(reply.dropFirst(4)) : reply)")
            }
            try store.backend.deleteVolume(aside)
            for prev in replaced { try store.backend.deleteVolume(prev) }
            try Sys.unlink(c.journalPath)
            return pid
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
            try Snapshots.removeSnapshotDir(backend, j.path)
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
