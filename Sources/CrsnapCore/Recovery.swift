import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// Finishes or undoes an operation that was interrupted (crsnap killed at any
/// step), from its journal entry. Runs under the container's lock at the start
/// of take, rollback, delete, stop and rm, and from `crsnap doctor --repair`.
///
/// Outcomes:
/// - take: the snapshot is listed only if it was renamed into place complete
///   (manifest written last); otherwise its staging directory (images and fs
///   snapshot) is removed, link_remap files CRIU left in the container's files
///   are removed, and the tasks are thawed.
/// - rollback: if the tree runs (never stopped, or restored before the kill)
///   the leftovers are deleted; if it is gone, the rollback is finished from
///   the snapshot (fresh clone, restore by the monitor); only if that is
///   impossible are the previous files put back, with the container stopped.
/// - delete: the deletion is finished.
/// In every case the container's freezer cgroup is thawed once no CRIU is
/// attached to its tasks, and staging directories nothing refers to go.
enum Recovery {
    static func note(_ text: String) {
        FileHandle.standardError.write(Data("crsnap: \(text)\n".utf8))
    }

    /// Returns what was done, one line per action (also written to stderr).
    @discardableResult
    static func finishInterrupted(_ c: Container, quiet: Bool = false) throws -> [String] {
        var done: [String] = []
        func did(_ s: String) {
            done.append(s)
            if !quiet { note(s) }
        }
        if Sys.exists(c.journalPath) {
            let j: Journal
            do {
                j = try JSON.read(Journal.self, from: c.journalPath)
            } catch {
                throw CrsnapError(.failed, "container \"\(c.name)\": the journal of an interrupted operation \(c.journalPath) does not parse; inspect it and remove it by hand")
            }
            switch j.op {
            case "take":
                try finishTake(c, j)
                did("\(c.name): an interrupted take was undone (no snapshot was added)")
            case "rollback":
                did(try finishRollback(c, j))
            case "delete":
                try waitForCriu(c, path: j.path)
                try Snapshots.removeDirectory(c, j.path)
                try Sys.unlink(c.journalPath)
                did("\(c.name): an interrupted delete of \((j.path as NSString).lastPathComponent) was finished")
            default:
                throw CrsnapError(.failed, "container \"\(c.name)\": unknown operation \"\(j.op)\" in \(c.journalPath)")
            }
        }
        for staging in stagingDirs(c) {
            try waitForCriu(c, path: staging)
            try Snapshots.removeSnapshotDir(c.store.backend, staging)
            did("\(c.name): removed the leftover \(staging)")
        }
        if Sys.exists(RestoreTest.workDir(c)) || (try? RestoreTest.cgroup(c))?.exists == true {
            try RestoreTest.removeLeftovers(c)
            did("\(c.name): removed what an interrupted restore test left (its clones and cgroup)")
        }
        if try thawIfStale(c) { did("\(c.name): the container was left frozen; thawed it") }
        return done
    }

    static func stagingDirs(_ c: Container) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: c.snapshotsDir)) ?? [])
            .filter { $0.hasPrefix(".staging-") }.map { "\(c.snapshotsDir)/\($0)" }
    }

    static func finishTake(_ c: Container, _ j: Journal) throws {
        // A CRIU whose crsnap died may still be finishing (it aborts the dump
        // and resumes the tasks when its peer is gone): let it.
        try waitForCriu(c, path: j.path)
        try Snapshots.removeSnapshotDir(c.store.backend, j.path)
        _ = try thawIfStale(c)
        try sweepLinkRemaps(c)
        try Sys.unlink(c.journalPath)
    }

    static func finishRollback(_ c: Container, _ j: Journal) throws -> String {
        let backend = c.store.backend
        let aside = j.path
        let next = Rollback.next(c)
        let target = j.snapshot.map { "\(c.name)@\($0)" } ?? "a snapshot"
        // The monitor serves one request at a time: a restore it is doing for
        // the crsnap that died finishes before this answer comes.
        if c.monitorAlive { _ = try? MonitorChannel.request(dir: c.dir, "status") }
        if c.isRunning {
            // Either the tree was never stopped, or its restore completed.
            let restored = backend.isVolume(aside)
            let neverStopped = backend.isVolume(next)
            if neverStopped { try backend.deleteVolume(next) }
            if restored { try backend.deleteVolume(aside) }
            _ = try? MonitorChannel.request(dir: c.dir, "release")
            try Sys.unlink(c.journalPath)
            if restored { return "\(c.name): an interrupted rollback to \(target) had restored the processes; finished it" }
            if neverStopped { return "\(c.name): an interrupted rollback to \(target) had not stopped the processes; they run on, nothing was changed" }
            return "\(c.name): an interrupted rollback to \(target) left nothing to undo; the processes run"
        }
        // The tree is gone: finish the rollback from the snapshot.
        let config = try c.config()
        let revert = Revert()
        revert.push("end journal") { try Sys.unlink(c.journalPath) }
        do {
            return try revert.run {
                guard let n = j.snapshot else {
                    throw CrsnapError(.failed, "the journal does not name the snapshot")
                }
                try Verify.require(c, n, doing: "finishing the rollback")
                if Mounts.isMountPoint(c.rootMount) { try Rollback.unmountRoot(c) }
                if backend.isVolume(aside) && backend.isVolume(c.volume) {
                    // The new volume, maybe touched by a restore that failed: start afresh.
                    try backend.deleteVolume(c.volume)
                }
                try Rollback.cloneSnapshot(c, n)
                revert.push("delete \(next)") { if backend.isVolume(next) { try backend.deleteVolume(next) } }
                try Rollback.holdMonitor(c, revert: revert)
                try c.cgroup().killAll()
                // The interrupted rollback killed the tasks.
                let pid = try Rollback.swapAndRestore(c, n, revert: revert, killed: true).pid
                return "\(c.name): an interrupted rollback to \(target) was finished (init pid \(pid))"
            }
        } catch {
            // Could not finish: the files are as before the rollback (the revert
            // put them back); make sure the root is mounted.
            if !backend.isVolume(c.volume) && backend.isVolume(aside) { try Sys.rename(aside, c.volume) }
            if backend.isVolume(next) { try? backend.deleteVolume(next) }
            if !Mounts.isMountPoint(c.rootMount) {
                try? ContainerRoot.mount(volume: c.volume, kind: config.kind, at: c.rootMount)
            }
            try Sys.unlink(c.journalPath)
            throw CrsnapError(.failed, "container \"\(c.name)\": an interrupted rollback to \(target) could not be finished: \(error)\nits files are as they were before that rollback; its processes are stopped (crsnap rollback again, or crsnap rm)")
        }
    }

    /// Waits (bounded) until no CRIU works on the container: no task of its
    /// cgroup is traced and no other process has a file open under `path`.
    static func waitForCriu(_ c: Container, path: String, timeout: Double = 30) throws {
        let cg = try? c.cgroup()
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let isTraced = cg.map { Recovery.traced($0) } ?? false
            let busy = !processesHolding(path).isEmpty
            if !isTraced && !busy { return }
            if Date() > deadline {
                throw CrsnapError(.failed, "container \"\(c.name)\": a CRIU process is still at work on it after \(Int(timeout)) s (\(path)); try again later")
            }
            usleep(50_000)
        }
    }

    /// True when a task of the cgroup is ptrace-attached (CRIU has seized it).
    static func traced(_ cg: FreezerCgroup) -> Bool {
        cg.procs().contains { pid in
            guard let status = Proc.status(pid), let tracer = Proc.field("TracerPid", in: status) else { return false }
            return Int(tracer.trimmingCharacters(in: .whitespaces)) ?? 0 != 0
        }
    }

    /// Processes other than this one with an fd, cwd or root under `path`.
    static func processesHolding(_ path: String) -> [pid_t] {
        guard Sys.exists(path) else { return [] }
        let me = getpid()
        var out: [pid_t] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry), pid != me else { continue }
            var links = ["cwd", "root"]
            links += ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).map { "fd/\($0)" }
            for l in links {
                if let t = try? Sys.readLink("/proc/\(pid)/\(l)"), t == path || t.hasPrefix(path + "/") {
                    out.append(pid)
                    break
                }
            }
        }
        return out
    }

    /// The watchdog's check: a frozen cgroup that no CRIU is working on is
    /// left over from a crsnap that died; thaw it. Returns true if it did.
    @discardableResult
    static func thawIfStale(_ c: Container) throws -> Bool {
        guard let cg = try? c.cgroup(), cg.exists, cg.state() != "THAWED", !traced(cg) else { return false }
        try cg.thaw()
        return true
    }

    /// CRIU names the extra hard links it makes for open files whose path was
    /// unlinked `link_remap.N`, next to the file, and removes them when the
    /// dump ends; a dump cut short may leave them in the container's files,
    /// as a take cut short in its capture of unlinked files may leave its
    /// scratch directory.
    static func sweepLinkRemaps(_ c: Container) throws {
        guard let config = try? c.config() else { return }
        Unlinked.sweep(c, kind: config.kind)
        let files = ContainerRoot.filesDir(volume: c.volume, kind: config.kind)
        guard let e = FileManager.default.enumerator(atPath: files) else { return }
        while let rel = e.nextObject() as? String {
            let name = (rel as NSString).lastPathComponent
            guard name.hasPrefix("link_remap."), Int(name.dropFirst(11)) != nil else { continue }
            try Sys.unlink("\(files)/\(rel)")
        }
    }
}

/// CRIU present, answering over RPC, and recent enough for this kernel.
enum CriuCheck {
    static func usable(for what: String) throws -> (Criu, CriuVersionInfo) {
        let criu: Criu
        do {
            criu = try Criu.locate()
        } catch {
            throw CrsnapError(.failed, "\(what): CRIU is missing: \(error); nothing was changed")
        }
        let v: CriuVersionInfo
        do {
            v = try criu.version()
        } catch {
            throw CrsnapError(.failed, "\(what): \(criu.binary) does not answer as CRIU over RPC (\(error)); nothing was changed")
        }
        guard v >= CriuVersionInfo.required else {
            throw CrsnapError(.failed, "\(what): \(criu.binary) is CRIU \(v); crsnap needs >= \(CriuVersionInfo.required) on this kernel; nothing was changed")
        }
        return (criu, v)
    }
}

/// `crsnap doctor --repair`: recovery for every container of the store.
public enum Repair {
    public struct Outcome: Codable {
        public var container: String
        public var actions: [String]
        public var error: String?
    }

    /// Containers that need recovery (journal, staging leftovers, stale
    /// freeze), without taking locks or changing anything.
    public static func pending(store: Store) -> [String] {
        containersPending(store: store) + Networks.leftovers(store: store).map(\.what) + importsPending(store: store)
    }

    static func importsPending(store: Store) -> [String] {
        Transfer.leftoverImports(store).map { "\($0): what an interrupted import wrote" }
    }

    static func containersPending(store: Store) -> [String] {
        store.containerNames().compactMap { n in
            guard let c = try? Container(store: store, name: n) else { return nil }
            if Sys.exists(c.journalPath) { return "\(n): interrupted operation (journal.json)" }
            if !Recovery.stagingDirs(c).isEmpty { return "\(n): staging leftovers" }
            if let cg = try? c.cgroup(), cg.exists, cg.state() != "THAWED", !Recovery.traced(cg) { return "\(n): frozen with no CRIU attached" }
            return nil
        }
    }

    /// `pending` as doctor warnings.
    public static func pendingChecks(store: Store) -> [Doctor.Check] {
        containersPending(store: store).map {
            Doctor.Check(name: "recovery", status: .warn, detail: "\($0) (crsnap doctor --repair, or any command on it)")
        } + (Networks.leftovers(store: store).map(\.what) + importsPending(store: store)).map {
            Doctor.Check(name: "recovery", status: .warn, detail: "\($0) (crsnap doctor --repair)")
        }
    }

    public static func repairAll(store: Store, only: [String] = []) -> [Outcome] {
        var outcomes = store.containerNames().filter { only.isEmpty || only.contains($0) }.map { n in
            do {
                let c = try Container(store: store, name: n)
                let lock = try c.lock()
                defer { lock.release() }
                return Outcome(container: n, actions: try Recovery.finishInterrupted(c, quiet: true), error: nil)
            } catch {
                return Outcome(container: n, actions: [], error: "\(error)")
            }
        }
        // The host's side of bridged containers: not any one container's.
        if only.isEmpty {
            do {
                let done = try Networks.removeLeftovers(store: store)
                if !done.isEmpty { outcomes.append(Outcome(container: "network", actions: done, error: nil)) }
            } catch {
                outcomes.append(Outcome(container: "network", actions: [], error: "\(error)"))
            }
            let removed = Transfer.sweepImports(store)
            if !removed.isEmpty { outcomes.append(Outcome(container: "import", actions: removed.map { "removed \($0), left by an interrupted import" }, error: nil)) }
        }
        return outcomes
    }
}
