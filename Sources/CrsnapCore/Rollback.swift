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
    /// The snapshot held files only: the container's command was started afresh.
    public var restarted = false
    /// What the restored TCP connections came back as: "close" or "restore"
    /// (nil: files only, nothing restored).
    public var tcp: String?
    public var stats: RollbackStats
}

/// `rollback --tcp` / `resume --tcp`: what the restored processes' TCP
/// connections come back as.
public enum TCPRestore: String, CaseIterable, Sendable {
    /// Shut down: the process sees the connection end; its peer reconnects.
    case close
    /// Established, with the snapshot's sequence numbers (CRIU's repair mode).
    case restore
    /// Established between the container's own sockets, aborted (reset)
    /// where the peer is outside its network namespace: for a container
    /// with a network of its own (not a choice of --tcp).
    case closeOutside = "close-outside"

    public init(parsing text: String) throws {
        guard let t = TCPRestore(rawValue: text), t != .closeOutside else {
            throw CrsnapError(.usage, "invalid --tcp \"\(text)\": expected close or restore")
        }
        self = t
    }

    /// Without a choice: in a network namespace of the container's own,
    /// which comes back whole, inside connections established and those to
    /// outside peers (which saw them end) aborted; in the host's network,
    /// closed where the tasks were killed (their peers saw the end, their
    /// ends linger on the address pairs), else established (CRIU closed a
    /// stopped container's connections silently).
    static func automatic(killed: Bool, ownNetwork: Bool) -> TCPRestore {
        ownNetwork ? .closeOutside : killed ? .close : .restore
    }

    /// What a snapshot can give: one whose connections were not saved
    /// (`Manifest.tcp_closed`) restores them closed, whatever was asked.
    func respecting(_ m: Manifest) -> TCPRestore { m.tcp_closed == true ? .close : self }

    /// The word of the monitor's restore request.
    var word: String {
        switch self {
        case .close: return "tcp-close"
        case .restore: return "tcp-established"
        case .closeOutside: return "tcp-close-outside"
        }
    }

    init(word: String) {
        self = TCPRestore.allCases.first { $0.word == word } ?? .restore
    }
}

public struct RollbackStats: Codable, Equatable {
    /// The whole rollback, lock to reply: what the caller waits.
    public var total_ms = 0.0
    /// The pre-rollback snapshot (a take; 0 when none was taken).
    public var pre_rollback_ms = 0.0
    /// Writing the store's dirty data back (the pre-rollback snapshot's
    /// images), while the tasks still run.
    public var flush_ms = 0.0
    /// Killing the container's tasks until its cgroup was empty: from here
    /// until the restored tasks run, the service does not answer.
    public var kill_ms = 0.0
    /// Putting the snapshot's files in place: the writable clone (made
    /// before the kill), the swap of the volumes and the mount.
    public var fs_ms = 0.0
    /// CRIU's restore as the monitor timed it (the processes restored, not
    /// yet running).
    public var restore_ms = 0.0
    /// With --lazy: from the end of CRIU's restore (the tasks run) until the
    /// lazy-pages daemon had put every page of their memory back; 0 without.
    public var lazy_pages_ms = 0.0
    /// Copying the paths kept across rollback (`run --keep`) from the
    /// replaced files into the snapshot's, with the tasks stopped (part of
    /// fs_ms); 0 without.
    public var keep_ms = 0.0
    /// File locks of the snapshot checked in the restored tree, those taken
    /// again inside their processes, and the time that took (0 when the
    /// snapshot holds no lock; see docs/design.md, "File locks").
    public var locks_checked = 0
    public var locks_repaired = 0
    public var lock_repair_ms = 0.0
}

/// The monitor's answer to a restore: "ok PID [CHECKED REPAIRED REPAIR_MS RESTORE_MS [LAZY_MS]]".
struct Restored {
    var pid: pid_t
    var stats = RollbackStats()
    var tcp = TCPRestore.restore

    init?(reply: String) {
        let w = reply.split(separator: " ")
        guard w.count >= 2, w[0] == "ok", let pid = pid_t(w[1]) else { return nil }
        self.pid = pid
        if w.count >= 6, let checked = Int(w[2]), let repaired = Int(w[3]), let ms = Double(w[4]), let restore = Double(w[5]) {
            stats.restore_ms = restore
            stats.locks_checked = checked
            stats.locks_repaired = repaired
            stats.lock_repair_ms = ms
        }
        if w.count >= 7, let lazy = Double(w[6]) { stats.lazy_pages_ms = lazy }
    }
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
    /// Rolls back to `id`. A running container is first checkpointed (a
    /// "pre-rollback" snapshot), so the rollback can be undone and, should the
    /// restore fail, the state it replaced comes back.
    /// With `lazy` the processes run as soon as CRIU has restored them, their
    /// memory coming back on demand (see `LazyPagesDaemon`); the rollback
    /// returns once all of it is back.
    /// A files-only snapshot (`take --fs-only`) has no processes: rolling
    /// back to it starts the container's command afresh, which the caller
    /// must have agreed to (`restart`).
    public static func rollback(store: Store, id: SnapshotID, preSnapshot: Bool = true, lazy: Bool = false,
                                restart: Bool = false, tcp: TCPRestore? = nil) throws -> RollbackResult {
        try Container.locked(store: store, name: id.container) { c in
            return try rollbackLocked(c, id.number, preSnapshot: preSnapshot, lazy: lazy, restart: restart, tcp: tcp)
        }
    }

    /// Goes back to the state the last rollback replaced.
    public static func undo(store: Store, name: String, lazy: Bool = false, restart: Bool = false,
                            tcp: TCPRestore? = nil) throws -> RollbackResult {
        try Container.locked(store: store, name: name) { c in
            guard let n = Undo.needed(c) else {
                throw CrsnapError(.notFound, "container \"\(name)\" has no rollback to undo (none recorded, or its pre-rollback snapshot was deleted)")
            }
            return try rollbackLocked(c, n, preSnapshot: true, lazy: lazy, restart: restart, tcp: tcp)
        }
    }

    /// Brings a stopped container back from its newest snapshot (after `take --stop`, or a reboot).
    public static func resume(store: Store, name: String, lazy: Bool = false, restart: Bool = false,
                              tcp: TCPRestore? = nil) throws -> RollbackResult {
        try Container.locked(store: store, name: name) { c in
            if c.isRunning { throw CrsnapError(.conflict, "container \"\(name)\" is running; resume is for a stopped container") }
            guard let n = c.snapshotNumbers().last else {
                throw CrsnapError(.notFound, "container \"\(name)\" has no snapshot to resume from")
            }
            return try rollbackLocked(c, n, preSnapshot: false, lazy: lazy, restart: restart, tcp: tcp)
        }
    }

    /// Whether snapshot `id` of container `name` holds files only (for the
    /// CLI's question before a rollback).
    /// `number` nil: the newest (what resume uses); `undo`: what rollback --undo goes to.
    public static func isFilesOnly(store: Store, name: String, number: Int?, undo: Bool = false) -> Bool {
        guard let c = try? Container(store: store, name: name),
              let n = undo ? Undo.needed(c) : (number ?? c.snapshotNumbers().last),
              let m = try? c.manifest(n) else { return false }
        return m.isFilesOnly
    }

    static func rollbackLocked(_ c: Container, _ n: Int, preSnapshot: Bool, lazy: Bool, restart: Bool,
                               tcp: TCPRestore? = nil) throws -> RollbackResult {
        let id = "\(c.name)@\(n)"
        let started = DispatchTime.now()
        var preMs = 0.0, cloneMs = 0.0
        // Images are a trust boundary: only complete snapshots whose images
        // match the checksums recorded at take time are restored.
        try Verify.require(c, n, doing: "rollback to \(id)")
        let filesOnly = try c.manifest(n).isFilesOnly
        if filesOnly && lazy {
            throw CrsnapError(.usage, "\(id) is a files-only snapshot: it holds no memory to bring back lazily (drop --lazy); nothing was changed")
        }
        if filesOnly && !restart {
            throw CrsnapError(.usage, "\(id) is a files-only snapshot (its processes were not checkpointed): rolling back to it puts its files back and starts the container's command afresh; pass --yes to do that. nothing was changed")
        }
        try Keep.check(c, n, try c.config())
        let cg = try c.cgroup()
        try cg.create()
        _ = try CriuCheck.usable(for: "rollback to \(id)")
        try Faults.check("rollback.verified")

        // Before anything is stopped: the monitor held, the pre-rollback
        // snapshot, the journal and the new volume (a full store fails here).
        // A failure up to this point leaves the container as it was.
        var pre: Int?
        let prepare = Revert()
        do {
            try prepare.run {
                try holdMonitor(c, revert: prepare)
                if c.isRunning && preSnapshot {
                    let t = DispatchTime.now()
                    // Going to a files-only snapshot, the state left may not
                    // be checkpointable either: then its files are kept.
                    var o = TakeOptions(role: .preRollback)
                    o.fallbackFilesOnly = filesOnly
                    let p = try Take.takeLocked(c, o).number
                    preMs = milliseconds(since: t)
                    pre = p
                    prepare.push("delete the pre-rollback snapshot \(c.name)@\(p)") { try Snapshots.deleteLocked(c, p) }
                }
                try JSON.write(Journal(op: "rollback", started: Date(), path: aside(c), snapshot: n), to: c.journalPath)
                prepare.push("end journal") { try Sys.unlink(c.journalPath) }
                let t = DispatchTime.now()
                try cloneSnapshot(c, n)
                cloneMs = milliseconds(since: t)
            }
        } catch {
            var message = "rollback to \(id) failed: \(error)\n"
            if !"\(error)".contains("No space left"), let hint = Space.hint(c.store) { message += hint + "\n" }
            throw CrsnapError(.failed, message + "nothing was changed; the container runs on")
        }

        // Stop the tree, swap the volume, restore.
        do {
            let restored = try stopAndRestore(c, n, faults: true, lazy: lazy, tcp: tcp)
            try? JSON.write(Undo.Record(preRollback: pre, target: n, at: Date()), to: Undo.path(c))
            var stats = restored.stats
            stats.pre_rollback_ms = preMs
            stats.fs_ms += cloneMs
            stats.total_ms = milliseconds(since: started)
            return RollbackResult(id: id, pid: restored.pid, pre_rollback: pre.map { "\(c.name)@\($0)" }, restarted: filesOnly,
                                  tcp: filesOnly ? nil : restored.tcp.rawValue, stats: stats)
        } catch {
            // The swap was undone: the files are as before the rollback.
            var message = "rollback to \(id) failed: \(error)\n"
            if !"\(error)".contains("No space left"), let hint = Space.hint(c.store) { message += hint + "\n" }
            guard let pre else {
                _ = try? MonitorChannel.request(dir: c.dir, "release")
                throw CrsnapError(.failed, message + "the container's files are as they were before the rollback; its processes were stopped")
            }
            let preId = "\(c.name)@\(pre)"
            let back: Error?
            do {
                try JSON.write(Journal(op: "rollback", started: Date(), path: aside(c), snapshot: pre), to: c.journalPath)
                // The monitor may be what failed (killed inside the restore):
                // hold it again, or start an idle one.
                try holdMonitor(c, revert: Revert())
                try cloneSnapshot(c, pre)
                // Eager, and the pre-rollback snapshot's files as they are
                // (no kept paths carried over, whose sizes may have moved
                // on since): the way back must not depend on what just failed.
                _ = try stopAndRestore(c, pre, faults: false, lazy: false, keep: false, killedBefore: true)
                back = nil
            } catch let second {
                back = second
            }
            if let back {
                _ = try? MonitorChannel.request(dir: c.dir, "release")
                throw CrsnapError(.failed, message + "restoring the state from before the rollback (\(preId)) failed too: \(back)\nthe container is stopped; its files are as before the rollback and \(preId) holds its processes")
            }
            throw CrsnapError(.failed, message + "the container is back in the state from before the rollback (\(preId)), running")
        }
    }

    /// With the journal written and the clone at fs.next: kill the tree, swap
    /// the volumes, have the monitor restore. Undone on failure (the previous
    /// volume back in place, the clone deleted, the journal ended).
    /// `killedBefore`: the tasks were killed by an earlier attempt (the way
    /// back after a failed restore), so their connections are closed too.
    /// `tcp` nil: `TCPRestore.automatic`.
    static func stopAndRestore(_ c: Container, _ n: Int, faults: Bool, lazy: Bool, keep: Bool = true,
                               killedBefore: Bool = false, tcp: TCPRestore? = nil) throws -> Restored {
        let backend = c.store.backend
        let revert = Revert()
        revert.push("end journal") { try Sys.unlink(c.journalPath) }
        revert.push("delete \(next(c))") { if backend.isVolume(next(c)) { try backend.deleteVolume(next(c)) } }
        return try revert.run {
            // Unmounting the root syncs the store's filesystem (overlay's
            // sync goes to the upper one): flush it while the tasks still
            // run, or the pre-rollback snapshot's images are written back
            // with the service stopped (seen: 1.7-2.6 s at 2 GiB).
            let f = DispatchTime.now()
            try Sys.syncfs(c.volume)
            let flushMs = milliseconds(since: f)
            if lazy {
                // The monitor starts CRIU's lazy-pages daemon while the tasks
                // still run (~50 ms here); the restore uses it.
                let reply = try MonitorChannel.request(dir: c.dir, "lazy-pages\n\(c.snapshotDir(n))/images")
                guard reply == "ok" else { throw CrsnapError(.failed, MonitorChannel.words(reply)) }
            }
            let running = !(try c.cgroup().procs()).isEmpty
            if running { Networks.refuseConnections(c, try c.config()) }
            let t = DispatchTime.now()
            try c.cgroup().killAll()
            let killMs = milliseconds(since: t)
            if faults { try Faults.check("rollback.killed") }
            var restored = try swapAndRestore(c, n, revert: revert, faults: faults, lazy: lazy, keep: keep,
                                              killed: killedBefore || running, tcp: tcp)
            restored.stats.kill_ms = killMs
            restored.stats.flush_ms = flushMs
            return restored
        }
    }


    /// Both halves of snapshot `n` are there (a quick check; Verify does the full one).
    static func checkComplete(_ c: Container, _ n: Int) throws {
        let snapDir = c.snapshotDir(n)
        guard c.store.backend.isVolume("\(snapDir)/fs") else {
            throw CrsnapError(.failed, "snapshot \(c.name)@\(n) is damaged: its filesystem snapshot \(snapDir)/fs is missing; nothing was changed")
        }
        guard (try? c.manifest(n))?.isFilesOnly == true || Sys.exists("\(snapDir)/images/inventory.img") else {
            throw CrsnapError(.failed, "snapshot \(c.name)@\(n) is damaged: \(snapDir)/images/inventory.img is missing; nothing was changed")
        }
    }

    static func aside(_ c: Container) -> String { "\(c.dir)/fs.prev" }
    static func next(_ c: Container) -> String { "\(c.dir)/fs.next" }

    /// A writable clone of snapshot `n`'s volume at fs.next, with the
    /// snapshot's unlinked open files put in place for the restore.
    static func cloneSnapshot(_ c: Container, _ n: Int) throws {
        let backend = c.store.backend
        if backend.isVolume(next(c)) { try backend.deleteVolume(next(c)) }
        try backend.snapshot("\(c.snapshotDir(n))/fs", to: next(c), readOnly: false)
        do {
            try Unlinked.place(try c.manifest(n), from: c.snapshotDir(n), volume: next(c), kind: try c.config().kind)
        } catch {
            try? backend.deleteVolume(next(c))
            throw error
        }
    }

    /// The monitor must live through the kill: it is the parent of the
    /// restored tree and holds the container's output pipe.
    static func holdMonitor(_ c: Container, revert: Revert) throws {
        var reply: String?
        if c.monitorAlive, let s = c.state() {
            do {
                reply = try MonitorChannel.request(dir: c.dir, "hold")
            } catch where !s.initProcess.isAlive {
                // Its tree has ended and it is on its way out: let it go and
                // start a fresh one.
                guard s.monitor.waitGone(timeout: 5) else {
                    throw CrsnapError(.failed, "rollback of \(c.name): the monitor (pid \(s.monitorPid)) neither answers nor exits: \(error)")
                }
            }
        }
        if let r = reply {
            guard r.hasPrefix("ok") else { throw CrsnapError(.failed, "rollback of \(c.name): the monitor refused: \(r)") }
        } else {
            try Lifecycle.spawnMonitor(c, idle: true)
        }
        revert.push("release the monitor") { _ = try MonitorChannel.request(dir: c.dir, "release") }
    }

    /// With the tree gone and the clone at fs.next: the current volume goes
    /// aside (unless it already is), the clone takes its place, volumes
    /// snapshotted with the snapshot go back too, kept paths (`run --keep`)
    /// are copied from the replaced files, the root is mounted and the
    /// monitor restores the tree; then what was replaced is deleted and the
    /// journal ended. Undone by `revert` on failure. `killed`: crsnap killed
    /// the tree it replaces; with `tcp` nil it decides what the TCP
    /// connections come back as (`TCPRestore.automatic`).
    static func swapAndRestore(_ c: Container, _ n: Int, revert: Revert, faults: Bool = true, lazy: Bool = false,
                               keep: Bool = true, killed: Bool, tcp: TCPRestore? = nil) throws -> Restored {
        let backend = c.store.backend
        let config = try c.config()
        let m = try c.manifest(n)
        let aside = aside(c)
        let snapDir = c.snapshotDir(n)
        func fault(_ point: String) throws { if faults { try Faults.check(point) } }
        let t = DispatchTime.now()
        if Mounts.isMountPoint(c.rootMount) { try unmountRoot(c) }
        revert.push("mount the previous root") {
            try ContainerRoot.mount(volume: c.volume, kind: config.kind, at: c.rootMount)
        }
        // Keep the current files reachable until the restore has succeeded.
        if !backend.isVolume(aside) { try Sys.rename(c.volume, aside) }
        revert.push("put the previous volume back") { try Sys.rename(aside, c.volume) }
        try fault("rollback.aside")
        try Sys.rename(next(c), c.volume)
        revert.push("delete the new volume") { try backend.deleteVolume(c.volume) }
        try fault("rollback.cloned")
        let keepMs = keep ? try Keep.carryOver(c, config, from: aside) : 0
        // Volumes snapshotted with this snapshot go back too; the replaced
        // ones stay beside them until the restore has succeeded.
        var replaced: [String] = []
        for v in m.volumes ?? [] where v.snapshotted {
            let saved = "\(snapDir)/volumes/\(v.key)"
            guard backend.isVolume(saved) else { continue }
            let prev = "\(v.host).crsnap-prev"
            if backend.isVolume(prev) { try backend.deleteVolume(prev) }
            try Sys.rename(v.host, prev)
            revert.push("put volume \(v.host) back") { try Sys.rename(prev, v.host) }
            try backend.snapshot(saved, to: v.host, readOnly: false)
            revert.push("delete the new volume \(v.host)") { try backend.deleteVolume(v.host) }
            replaced.append(prev)
        }
        try ContainerRoot.mount(volume: c.volume, kind: config.kind, at: c.rootMount)
        revert.push("unmount the new root") { try unmountRoot(c) }
        let fsMs = milliseconds(since: t)
        try fault("rollback.restore")
        // A files-only snapshot: the command starts afresh on its files.
        let choice = (tcp ?? .automatic(killed: killed, ownNetwork: config.networkMode.ownNamespace)).respecting(m)
        let request = m.isFilesOnly ? "launch\n\(m.id)" : restoreRequest(c, n, m, lazy: lazy, tcp: choice)
        let reply = try MonitorChannel.request(dir: c.dir, request, afterSend: { try fault("rollback.restoring") })
        guard var restored = Restored(reply: reply) else {
            // The caller says what was being done: the monitor's own words.
            throw CrsnapError(.failed, MonitorChannel.words(reply))
        }
        restored.tcp = choice
        restored.stats.fs_ms = fsMs
        restored.stats.keep_ms = keepMs
        try fault("rollback.restored")
        try backend.deleteVolume(aside)
        for prev in replaced { try backend.deleteVolume(prev) }
        try Sys.unlink(c.journalPath)
        return restored
    }

    static func unmountRoot(_ c: Container) throws { try Mounts.unmountOrDetach(c.rootMount) }

    /// The monitor's request to restore snapshot `n` (manifest `m`) into the
    /// container's root: its images, the output pipe they name, a label for
    /// the log, eager or lazy, TCP connections closed or established (see
    /// `RestoreRequest.closeTCP`).
    static func restoreRequest(_ c: Container, _ n: Int, _ m: Manifest, lazy: Bool, tcp: TCPRestore) -> String {
        ["restore", "\(c.snapshotDir(n))/images", c.rootMount, m.log_pipe, m.id, lazy ? "lazy" : "eager",
         tcp.word].joined(separator: "\n")
    }
}

/// The baseline Scripts/bench-pause compares rollback against: the
/// container's tasks killed and a snapshot's images restored by CRIU into
/// the root as it is, by the container's monitor like a rollback's restore,
/// with nothing of a rollback around it (no verification, no pre-rollback
/// snapshot, no files put back). Only for a service whose state lives in
/// memory alone (the benchmark's redis); nothing is recorded in the store.
public enum BareRestore {
    public static func restore(store: Store, id: SnapshotID) throws -> RollbackStats {
        try Container.locked(store: store, name: id.container) { c in
            let m = try c.manifest(id.number)
            try Rollback.holdMonitor(c, revert: Revert())
            Networks.refuseConnections(c, try c.config())
            let t = DispatchTime.now()
            try c.cgroup().killAll()
            let killMs = milliseconds(since: t)
            let tcp = TCPRestore.automatic(killed: true, ownNetwork: try c.config().networkMode.ownNamespace).respecting(m)
            let reply = try MonitorChannel.request(dir: c.dir, Rollback.restoreRequest(c, id.number, m, lazy: false, tcp: tcp))
            guard var restored = Restored(reply: reply) else {
                _ = try? MonitorChannel.request(dir: c.dir, "release")
                throw CrsnapError(.failed, "bare restore of \(id) failed: \(MonitorChannel.words(reply))")
            }
            restored.stats.kill_ms = killMs
            restored.stats.total_ms = milliseconds(since: t)
            return restored.stats
        }
    }
}
