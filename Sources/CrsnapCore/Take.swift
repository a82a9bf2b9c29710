import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// The journal entry of an operation in progress; a leftover one is cleaned
/// up by the next operation on the container.
struct Journal: Codable {
    var op: String
    var started: Date
    /// take: the staging directory; rollback: the volume kept aside;
    /// delete: the snapshot directory.
    var path: String
    /// rollback: the snapshot number being rolled back to.
    var snapshot: Int? = nil
}

/// The steps of one take, as seen by the transaction. The real ones call CRIU
/// and btrfs; unit tests fake them.
public protocol TakeSteps: AnyObject {
    /// Files only: `dump` freezes, snapshots and returns without CRIU.
    var filesOnly: Bool { get }
    /// Flush the container's filesystem (before the freeze).
    func flush() throws
    /// Snapshot the writable volume into `destination` (tasks are frozen).
    func snapshotVolume(to destination: String) throws
    /// Dump the tree into `imagesDir`; calls back into `onPreDump`/`onPostDump`.
    func dump(imagesDir: String, onPreDump: @escaping () throws -> Void,
              onPostDump: @escaping () throws -> Void) throws -> DumpStats
    /// Freeze the container's tasks and wait until all are frozen (right
    /// before CRIU seizes them, after the flush).
    func freeze() throws
    /// Make sure the container's tasks are not left frozen.
    func ensureThawed() throws
    func deleteVolume(_ path: String) throws
    func isVolume(_ path: String) -> Bool
    /// Capture the unlinked open files found before the dump into `dir`
    /// (tasks are frozen, the volume already snapshotted).
    func captureUnlinked(into dir: String) throws -> Unlinked.Captured
    /// What the dump found that is not part of the instant (after the dump).
    func warnings() -> [String]
    /// Make the empty images directory a tmpfs if the images are to be
    /// staged in memory; nil when they go to the store directly.
    func stageImages(at dir: String) throws -> ImageStaging.Plan?
    /// Copy staged images into the store in place of the tmpfs (tasks running).
    func unstageImages(_ dir: String) throws
}

extension TakeSteps {
    public var filesOnly: Bool { false }
    public func captureUnlinked(into dir: String) throws -> Unlinked.Captured { Unlinked.Captured() }
    public func warnings() -> [String] { [] }
    public func freeze() throws {}
    public func stageImages(at dir: String) throws -> ImageStaging.Plan? { nil }
    public func unstageImages(_ dir: String) throws {}
}

public struct TakeResult: Codable {
    public var id: String
    public var container: String
    public var number: Int
    public var tag: String?
    public var created: Date
    public var stats: Manifest.Stats
    /// CRIU's own figures for the dump.
    public var criu: DumpStats
    public var role: SnapshotRole = .single
    public var pair: Int?
    public var stopped = false
    /// What the snapshot does not hold although the container uses it, e.g.
    /// file locks shared with processes outside the container.
    public var warnings: [String]?
    /// Files only: no processes in it (`--fs-only`, or the fallback).
    public var fs_only = false
    /// With `--fallback fs-only`: why the checkpoint failed, when it did.
    public var fallback_reason: String?
}

public struct TakeOptions {
    public var tag: String?
    public var role: SnapshotRole = .single
    /// For a post snapshot: the number of its pre.
    public var pair: Int?
    /// Checkpoint and stop: the tasks are gone once the snapshot is complete.
    public var stop = false
    /// Seconds the tasks may take to freeze before the take gives up (thawed,
    /// nothing added).
    public var freezeTimeout = TakeOptions.defaultFreezeTimeout
    public static let defaultFreezeTimeout = 5.0
    /// Where CRIU writes the images during the freeze (see `ImageStaging`).
    public var stage = ImageStaging.Mode.auto
    /// Files only, no CRIU: the tasks are frozen for the filesystem snapshot alone.
    public var filesOnly = false
    /// When the checkpoint fails, take a files-only snapshot instead.
    public var fallbackFilesOnly = false
    /// With `stop`: the TCP connections are not saved but end as the tasks
    /// do, their peers told at once (a FIN or a reset); the snapshot
    /// restores them closed (`Manifest.tcp_closed`). For a stop after which
    /// the service comes back elsewhere (migrate), where the peers must
    /// reconnect anyway.
    public var closeConnections = false

    public init(tag: String? = nil, role: SnapshotRole = .single, pair: Int? = nil, stop: Bool = false,
                freezeTimeout: Double = TakeOptions.defaultFreezeTimeout) {
        self.tag = tag
        self.role = role
        self.pair = pair
        self.stop = stop
        self.freezeTimeout = freezeTimeout
    }
}

/// take: one frozen instant for memory and files.
public enum Take {
    public static func take(store: Store, name: String, tag: String?) throws -> TakeResult {
        try take(store: store, name: name, TakeOptions(tag: tag))
    }

    public static func take(store: Store, name: String, _ o: TakeOptions) throws -> TakeResult {
        if let tag = o.tag { try Names.validate(tag, what: "tag") }
        guard o.freezeTimeout > 0, o.freezeTimeout <= 600 else {
            throw CrsnapError(.usage, "--freeze-timeout must be more than 0 and at most 600 seconds (got \(o.freezeTimeout))")
        }
        return try Container.locked(store: store, name: name) { c in
            try Faults.check("take.locked")
            if let pre = o.pair {
                let m = try c.manifest(pre)
                guard m.snapshotRole == .pre else {
                    throw CrsnapError(.usage, "\(m.id) is not a pre snapshot (it is \(m.snapshotRole.rawValue)); a post pairs with a pre")
                }
            }
            let r = try takeLocked(c, o)
            Retention.applyAfterTake(c)
            return r
        }
    }

    /// take with the container's lock held by the caller.
    static func takeLocked(_ c: Container, _ o: TakeOptions) throws -> TakeResult {
        if o.filesOnly || !o.fallbackFilesOnly { return try takeOnce(c, o, filesOnly: o.filesOnly) }
        do {
            return try takeOnce(c, o, filesOnly: false)
        } catch {
            // The container must still be there to be snapshotted.
            _ = try c.runningInit()
            let why = "\(error)".split(separator: "\n").prefix { !$0.hasPrefix("no snapshot was added") }.joined(separator: "\n")
            Progress.warn("\(why)\ntake \(c.name): the checkpoint failed; taking a files-only snapshot instead (--fallback fs-only)")
            var r = try takeOnce(c, o, filesOnly: true)
            r.fallback_reason = why
            r.warnings = (r.warnings ?? []) + ["the checkpoint failed, so this snapshot holds the files only; a rollback to it restarts the container's command"]
            return r
        }
    }

    static func takeOnce(_ c: Container, _ o: TakeOptions, filesOnly: Bool) throws -> TakeResult {
        let initPid = try c.runningInit()
        let config = try c.config()
        guard let state = c.state() else { throw CrsnapError(.conflict, "container \"\(c.name)\" has no state") }
        let cg = try c.cgroup()
        let criu: Criu?, version: String?
        var preflight: TakePreflight.Report?
        if filesOnly {
            (criu, version) = (nil, nil)
        } else {
            let (found, v) = try CriuCheck.usable(for: "take \(c.name)")
            (criu, version) = (found, v.description)
            // What CRIU would fail on after the freeze is refused before it.
            preflight = try TakePreflight.requireTakeable(c)
        }
        let steps = RealTakeSteps(container: c, criu: criu, initPid: initPid, cgroup: cg)
        steps.filesOnly = filesOnly
        steps.preflightWarnings = preflight?.warnings.map(\.description) ?? []
        steps.leaveRunning = !o.stop
        steps.closeTCP = o.stop && o.closeConnections && !filesOnly
        steps.freezeTimeout = o.freezeTimeout
        steps.stage = o.stage
        steps.tmpfs = config.tmpfs ?? []
        steps.volumes = config.volumes ?? []
        steps.kind = config.kind
        let nsPid = Proc.nsPids(initPid).last ?? 0
        var r: TakeResult
        do {
            r = try run(container: c, tag: o.tag, steps: steps) { number, stats in
                var m = Manifest(id: "\(c.name)@\(number)", container: c.name, number: number, tag: o.tag, created: Date(),
                                 kind: config.kind, backend: c.store.backend.name, log_pipe: state.logPipe,
                                 init_pid_ns: nsPid, criu_version: version, stats: stats)
                m.role = o.role
                m.pair = o.pair
                m.stopped = o.stop ? true : nil
                m.tcp_closed = steps.closeTCP ? true : nil
                m.volumes = config.volumes
                m.tmpfs = config.tmpfs
                m.stats.preflight_ms = preflight?.preflight_ms
                m.fs_only = filesOnly ? true : nil
                return m
            }
        } catch {
            var message = "\(filesOnly ? "files-only take" : "take") \(c.name) failed: \(error)"
            if !"\(error)".contains("No space left"),
               let hint = Space.hint(c.store, needed: c.manifests().last?.stats.images_bytes ?? 0) {
                message += "\n" + hint
            }
            throw CrsnapError(.failed, message + "\nno snapshot was added; the container runs on")
        }
        r.fs_only = filesOnly
        r.role = o.role
        r.pair = o.pair
        r.stopped = o.stop
        // Stopped means the monitor has gone too: the next command on the
        // container (resume) must not find it on its way out.
        if o.stop { _ = state.monitor.waitGone(timeout: 5) }
        return r
    }

    /// The transaction: staging directory, dump with the snapshot inside
    /// post-dump, verify, manifest, rename into place. Any failure removes the
    /// staging directory and leaves the tasks thawed.
    static func run(container c: Container, tag: String?, steps: TakeSteps,
                    manifest: (Int, Manifest.Stats) -> Manifest) throws -> TakeResult {
        let number = c.nextNumber()
        let staging = "\(c.snapshotsDir)/.staging-\(number)"
        let images = "\(staging)/images"
        let fsSnap = "\(staging)/fs"
        let revert = Revert()
        return try revert.run {
            try Sys.mkdir(c.snapshotsDir, mode: 0o700, existOK: true)
            // Journal first: a kill at any later point leaves nothing unrecorded.
            try JSON.write(Journal(op: "take", started: Date(), path: staging), to: c.journalPath)
            revert.push("end journal") { try Sys.unlink(c.journalPath) }
            try Sys.mkdir(staging, mode: 0o700)
            revert.push("remove \(staging)") {
                if steps.isVolume(fsSnap) { try steps.deleteVolume(fsSnap) }
                let volumes = "\(staging)/volumes"
                for v in (try? FileManager.default.contentsOfDirectory(atPath: volumes)) ?? [] where steps.isVolume("\(volumes)/\(v)") {
                    try steps.deleteVolume("\(volumes)/\(v)")
                }
                try Sys.removeTree(staging)
            }
            try Sys.mkdir(images, mode: 0o700)
            let staged = try steps.stageImages(at: images)
            if staged != nil {
                revert.push("unmount \(images)") { try ImageStaging.unmountIfMounted(images) }
            }
            // Pushed last so that it runs first: never leave the tasks frozen
            // while cleaning up.
            revert.push("thaw \(c.name)") { try steps.ensureThawed() }

            var fsMs = 0.0
            var snapshotted = false
            var unlinked = Unlinked.Captured()
            var freezeAsked: DispatchTime?
            var freezingMs: Double?
            let t0 = DispatchTime.now()
            let dumpStats = try steps.dump(imagesDir: images, onPreDump: {
                try Faults.check("take.pre-dump")
                try steps.flush()
                // crsnap freezes, not CRIU: CRIU finds the cgroup frozen and
                // seizes the tasks at once instead of sleeping 100 ms steps.
                let f = DispatchTime.now()
                freezeAsked = f
                try steps.freeze()
                freezingMs = milliseconds(since: f)
                try Faults.check("take.frozen")
            }, onPostDump: {
                let s = DispatchTime.now()
                try Faults.check("take.post-dump")
                try Faults.check("take.fs-snapshot")
                try steps.snapshotVolume(to: fsSnap)
                try Faults.check("take.fs-snapshotted")
                unlinked = try steps.captureUnlinked(into: "\(staging)/unlinked")
                fsMs = milliseconds(since: s)
                snapshotted = true
            })
            let dumpMs = milliseconds(since: t0)
            // CRIU leaves a cgroup it found frozen frozen again: the tasks run
            // from here on.
            try Faults.check("take.dumped")
            try steps.ensureThawed()
            let pauseMs = freezeAsked.map(milliseconds(since:))
            try Faults.check("take.thawed")
            var stagingMs: Double?
            if staged != nil {
                // The tasks run again: now the images go to the store.
                try Faults.check("take.staged")
                let s0 = DispatchTime.now()
                try steps.unstageImages(images)
                stagingMs = milliseconds(since: s0)
            }
            guard snapshotted, steps.isVolume(fsSnap) else {
                throw CrsnapError(.failed, "take \(c.name): CRIU finished without the post-dump notification; no filesystem snapshot was taken")
            }
            guard steps.filesOnly || Sys.exists("\(images)/inventory.img") else {
                throw CrsnapError(.failed, "take \(c.name): CRIU wrote no inventory.img in \(images)")
            }
            try Faults.check("take.manifest")
            // Outside the freeze: the tasks run on while the images are hashed.
            let h0 = DispatchTime.now()
            let sums = try Checksums.images(images)
            let hashMs = milliseconds(since: h0)
            var stats = Manifest.Stats(frozen_ms: dumpStats.frozenMs, fs_snapshot_ms: fsMs, dump_ms: dumpMs,
                                       images_bytes: Sys.treeSize(images), checksum_ms: hashMs)
            stats.freezing_ms = freezingMs
            stats.pause_ms = pauseMs
            stats.staging_copy_ms = stagingMs
            let caps = c.store.backend.capabilities
            if !caps.contains(.constantTimeSnapshot) {
                let size = Sys.treeSize(fsSnap)
                stats.copied_bytes = caps.contains(.cloneCopies) ? 0 : size
                if caps.contains(.cloneCopies) { stats.reflinked_bytes = size }
            }
            if !unlinked.files.isEmpty {
                stats.unlinked_bytes = unlinked.files.reduce(0) { $0 + $1.size }
                stats.copied_bytes = (stats.copied_bytes ?? 0) + unlinked.copiedBytes
                if unlinked.reflinkedBytes > 0 { stats.reflinked_bytes = (stats.reflinked_bytes ?? 0) + unlinked.reflinkedBytes }
            }
            var m = manifest(number, stats)
            m.images_sha256 = sums
            m.unlinked = unlinked.files.isEmpty ? nil : unlinked.files
            try JSON.write(m, to: "\(staging)/manifest.json")
            let final = c.snapshotDir(number)
            try Sys.rename(staging, final)
            try Sys.fsyncDirectory(c.snapshotsDir)
            try Faults.check("take.renamed")
            try Sys.writeAtomically(c.nextIDPath, Array("\(number + 1)\n".utf8))
            try Sys.unlink(c.journalPath)
            let warnings = steps.warnings()
            return TakeResult(id: m.id, container: c.name, number: number, tag: tag, created: m.created, stats: m.stats,
                              criu: dumpStats, warnings: warnings.isEmpty ? nil : warnings)
        }
    }
}

final class RealTakeSteps: TakeSteps, CriuNotifyHandler {
    let container: Container
    /// nil for a files-only take.
    let criu: Criu?
    var filesOnly = false
    let initPid: pid_t
    let cgroup: FreezerCgroup
    var preDump: (() throws -> Void)?
    var postDump: (() throws -> Void)?
    var leaveRunning = true
    /// See `TakeOptions.closeConnections`.
    var closeTCP = false
    var volumes: [Volume] = []
    var kind = RootKind.overlay
    /// Found before the dump, declared external, captured in post-dump.
    var unlinked: [UnlinkedOpenFile] = []
    var captured: [Manifest.UnlinkedFile] = []
    var sharedLocks: [SharedLock] = []
    var freezeTimeout = TakeOptions.defaultFreezeTimeout
    var stage = ImageStaging.Mode.auto
    /// The container's tmpfs mounts (their contents go into the images).
    var tmpfs: [String] = []
    /// A network namespace of its own: CRIU dumps it and locks it meanwhile.

    init(container: Container, criu: Criu?, initPid: pid_t, cgroup: FreezerCgroup) {
        self.container = container
        self.criu = criu
        self.initPid = initPid
        self.cgroup = cgroup
    }

    func flush() throws { try Sys.syncfs(container.volume) }

    func snapshotVolume(to destination: String) throws {
        let backend = container.store.backend
        try backend.snapshot(container.volume, to: destination, readOnly: true)
        // Volumes that are subvolumes on the store go into the same instant.
        let dir = "\((destination as NSString).deletingLastPathComponent)/volumes"
        for v in volumes where v.snapshotted {
            try Sys.mkdir(dir, mode: 0o700, existOK: true)
            try backend.snapshot(v.host, to: "\(dir)/\(v.key)", readOnly: true)
        }
    }

    func dump(imagesDir: String, onPreDump: @escaping () throws -> Void,
              onPostDump: @escaping () throws -> Void) throws -> DumpStats {
        preDump = onPreDump
        postDump = onPostDump
        guard let criu, !filesOnly else {
            // Files only: freeze (after the flush), snapshot, and the caller thaws.
            let t = DispatchTime.now()
            try onPreDump()
            try onPostDump()
            var stats = DumpStats.none
            stats.frozenMs = milliseconds(since: t)
            return stats
        }
        var req = DumpRequest(pid: initPid, imagesDir: imagesDir, freezeCgroup: cgroup)
        req.leaveRunning = leaveRunning
        req.closeTCP = closeTCP
        // No network lock, even on a namespace of the container's own: it
        // drops what clients send during the dump, and they wait out a
        // retransmission (Scripts/bench-network saw 200 ms and more); what
        // it would keep consistent, established connections to outside
        // peers, a rollback aborts anyway (TCPRestore.closeOutside). The
        // restore does lock.
        // Bind mounts from the host are external to CRIU: "mnt[PATH]:KEY".
        req.external = volumes.map { "mnt[\($0.container)]:\($0.key)" }
        // Unlinked open files are referenced, not copied, by CRIU: crsnap
        // clones them while the tasks are frozen.
        let tasks = cgroup.procs()
        unlinked = Unlinked.scan(tasks)
        // Locks on files that processes outside the container lock too
        // (a volume, a host path): looked up before the freeze.
        sharedLocks = FileLocks.shared(by: Set(tasks))
        defer {
            OpenFiles.close(unlinked)
            unlinked = []
        }
        req.external += unlinked.map(\.key)
        captured = []
        let stats = try Checkpointer(criu: criu).dump(req, handler: self)
        // Outside the freeze: the images name each captured file by the path
        // a restore puts it at, so CRIU opens it inside the restored root.
        try Unlinked.relocate(captured, in: imagesDir)
        // CRIU would restore a periodic timer that fired during the freeze
        // disarmed (criu#3162).
        try FilesImage.rearmExpiredTimers(in: imagesDir)
        return stats
    }

    /// The preflight's warnings (see `TakePreflight`).
    var preflightWarnings: [String] = []

    func warnings() -> [String] {
        preflightWarnings + sharedLocks.map { "file lock shared with processes outside the container: \($0)" }
    }

    func captureUnlinked(into dir: String) throws -> Unlinked.Captured {
        try Faults.check("take.unlinked")
        let r = try Unlinked.capture(unlinked, into: dir, container: container, kind: kind,
                                     reflink: Faults.action(at: "take.no-reflink") == nil)
        captured = r.files
        return r
    }

    func criuNotify(_ script: String, pid: Int32) throws {
        switch script {
        case "pre-dump": try preDump?()
        case "post-dump": try postDump?()
        default: break
        }
    }

    func freeze() throws {
        try cgroup.freeze(timeout: freezeTimeout, stuck: Faults.action(at: "take.freeze-stuck") != nil)
    }

    func ensureThawed() throws {
        if cgroup.state() != "THAWED" { try cgroup.thaw() }
    }

    func stageImages(at dir: String) throws -> ImageStaging.Plan? {
        if stage == .store || filesOnly { return nil }
        let tmpfsBytes = tmpfs.reduce(UInt64(0)) { $0 + (Space.usedBytes("/proc/\(initPid)/root\($1)") ?? 0) }
        let plan = ImageStaging.plan(tasks: cgroup.procs(), tmpfsBytes: tmpfsBytes)
        let mem = ImageStaging.meminfo()
        if let why = ImageStaging.refusal(plan, available: mem.available, floor: ImageStaging.floor(total: mem.total)) {
            if stage == .memory { throw CrsnapError(.failed, "cannot stage the images in memory (--stage memory): \(why)") }
            return nil
        }
        try ImageStaging.mount(at: dir, limit: plan.limit)
        return plan
    }

    func unstageImages(_ dir: String) throws {
        try ImageStaging.moveToStore(dir, dir + ".store")
    }

    func deleteVolume(_ path: String) throws { try container.store.backend.deleteVolume(path) }
    func isVolume(_ path: String) -> Bool { container.store.backend.isVolume(path) }
}

/// The baseline the benchmark compares take against: the same CRIU dump of
/// the same container (leave-running, through the same freezer cgroup) with
/// no notifications and no filesystem capture. Unlinked open files are left
/// to CRIU, which copies them into the images as ghost files (up to
/// `ghostLimit` bytes each). Images go to a scratch directory that is removed
/// afterwards; nothing is recorded in the store.
public enum BareDump {
    public static func dump(store: Store, name: String, scratch: String, ghostLimit: UInt32? = nil) throws -> DumpStats {
        let c = try Container(store: store, name: name)
        let lock = try c.lock()
        defer { lock.release() }
        let initPid = try c.runningInit()
        let cg = try c.cgroup()
        try Sys.mkdir(scratch, mode: 0o700)
        defer { try? Sys.removeTree(scratch) }
        var req = DumpRequest(pid: initPid, imagesDir: scratch, freezeCgroup: cg)
        req.notify = false
        if let ghostLimit { req.ghostLimit = ghostLimit }
        let stats = try Checkpointer(criu: try Criu.locate()).dump(req, handler: nil)
        if cg.state() != "THAWED" { try cg.thaw() }
        return stats
    }
}
