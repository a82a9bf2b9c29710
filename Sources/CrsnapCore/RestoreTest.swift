import CLibmount
import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// `verify --restore-test`: proof that a snapshot restores, without touching
/// the live container. The snapshot is restored by CRIU into a throwaway
/// container — a writable clone of its files, clones of its snapshotted
/// volumes, the other volumes seen through an overlay that takes any writes,
/// a freezer cgroup of its own — watched for a while, then killed and
/// removed.
///
/// It runs as `crsnap _restore-test`, pid 1 of new pid, mount and network
/// namespaces (`Program.spawnIsolated`): the snapshot's listening sockets
/// bind again in a network with loopback only, beside the live container's
/// (which shares the host's network), and reach nothing; its mounts are
/// private and vanish with the namespace; whatever it starts dies with it
/// when it ends, however it ends. Established TCP connections come back
/// closed. The container's lock is held throughout, so nothing else changes
/// the container meanwhile; what a crash leaves (the clones, the cgroup) is
/// removed by the next operation on the container (`removeLeftovers`).
public enum RestoreTest {
    public static let defaultSeconds = 2.0
    public static let maxSeconds = 600.0

    public struct Report: Codable, Equatable {
        public var id: String
        public var ok: Bool
        /// What went wrong, when not ok.
        public var problem: String?
        /// Tasks the restore brought up.
        public var tasks: Int
        /// Restored tasks that ended while watched ("PID COMM", the pid in the
        /// container's namespace); the test fails only when the init ends.
        public var ended: [String]
        public var restore_ms: Double
        public var watched_ms: Double
        public var total_ms: Double

        init(id: String) {
            self.id = id
            ok = false
            tasks = 0
            ended = []
            restore_ms = 0
            watched_ms = 0
            total_ms = 0
        }
    }

    static func workDir(_ c: Container) -> String { "\(c.dir)/restore-test" }
    /// CRIU's log of the last restore test that failed (removed when one passes).
    public static func failedLog(_ c: Container) -> String { "\(c.dir)/restore-test.log" }

    /// Beside the container's own cgroup, in the same hierarchy.
    static func cgroup(_ c: Container) throws -> FreezerCgroup {
        let live = try c.cgroup()
        return FreezerCgroup(path: live.path + ".restore-test", version: live.version)
    }

    /// Restores snapshot `id` into a throwaway container for `seconds`.
    public static func run(store: Store, id: SnapshotID, seconds: Double = defaultSeconds) throws -> Report {
        guard seconds > 0, seconds <= maxSeconds else {
            throw CrsnapError(.usage, "the restore test's duration must be more than 0 and at most \(Int(maxSeconds)) seconds")
        }
        return try Container.locked(store: store, name: id.container) { c in try runLocked(c, id.number, seconds: seconds) }
    }

    static func runLocked(_ c: Container, _ n: Int, seconds: Double) throws -> Report {
        let t0 = DispatchTime.now()
        try Verify.require(c, n, doing: "the restore test")
        let m = try c.manifest(n)
        if m.isFilesOnly {
            throw CrsnapError(.usage, "snapshot \(m.id) holds files only (take --fs-only): it has no processes to restore")
        }
        _ = try Criu.locate()
        try removeLeftovers(c)
        defer { try? removeLeftovers(c) }
        let exe = try Lifecycle.selfExecutable()
        var fds: [Int32] = [0, 0]
        try Sys.check("pipe", "restore test") { crsnap_pipe2(&fds, O_CLOEXEC) }
        let null = try Sys.open("/dev/null", O_RDWR)
        let argv = [exe, "_restore-test", "--store", c.store.path, c.name, "\(n)", String(seconds)]
        let pid: pid_t
        do {
            pid = try Program.spawnIsolated(path: exe, argv: argv, env: ProcessInfo.processInfo.environment,
                                            fdmap: [null, fds[1], 2])
        } catch {
            Sys.close(fds[0])
            Sys.close(fds[1])
            Sys.close(null)
            throw error
        }
        Sys.close(fds[1])
        Sys.close(null)
        let output = Sys.readToEnd(fds[0])
        Sys.close(fds[0])
        let status = Program.wait(pid)
        var report: Report
        if let r = try? JSONDecoder().decode(Report.self, from: Data(output)) {
            report = r
        } else {
            report = Report(id: m.id)
            report.problem = "the restore test ended with status \(status) without a report"
        }
        // Keep CRIU's log of a failed test where the message can point to it.
        let log = "\(workDir(c))/\(Checkpointer.restoreLog)"
        try? Sys.unlink(failedLog(c))
        if !report.ok && Sys.exists(log) {
            try? Sys.rename(log, failedLog(c))
            report.problem = report.problem?.replacingOccurrences(of: log, with: failedLog(c))
        }
        report.total_ms = milliseconds(since: t0)
        return report
    }

    /// Removes what a restore test left: its cgroup (its tasks killed) and
    /// its clones. Their mounts were in the test's own namespace and went
    /// with it; a clone still busy for a moment after that is tried again.
    static func removeLeftovers(_ c: Container) throws {
        if let cg = try? cgroup(c), cg.exists {
            try? cg.killAll()
            try cg.remove()
        }
        let work = workDir(c)
        guard Sys.exists(work) else { return }
        let backend = c.store.backend
        var volumes = ["\(work)/fs"]
        let vols = "\(work)/volumes"
        for k in (try? FileManager.default.contentsOfDirectory(atPath: vols)) ?? [] { volumes.append("\(vols)/\(k)") }
        for v in volumes where backend.isVolume(v) {
            var tries = 0
            while true {
                do {
                    try backend.deleteVolume(v)
                    break
                } catch {
                    tries += 1
                    if tries >= 50 { throw error }
                    usleep(100_000)
                }
            }
        }
        try FileManager.default.removeItem(atPath: work)
    }

    /// In `crsnap _restore-test`, pid 1 of its own namespaces: restore, watch
    /// for `seconds`, kill, remove. The report says what failed.
    public static func inner(store: Store, name: String, number n: Int, seconds: Double) -> Report {
        var report = Report(id: "\(name)@\(n)")
        var cleanups: [() -> Void] = []
        defer { for f in cleanups.reversed() { f() } }
        do {
            let c = try Container(store: store, name: name)
            let config = try c.config(), m = try c.manifest(n), snapDir = c.snapshotDir(n)
            let backend = store.backend
            let work = workDir(c)
            try Sys.mkdir(work, mode: 0o700, existOK: false)
            let volume = "\(work)/fs", root = "\(work)/root"
            try backend.snapshot("\(snapDir)/fs", to: volume, readOnly: false)
            cleanups.append { try? backend.deleteVolume(volume) }
            try Unlinked.place(m, from: snapDir, volume: volume, kind: config.kind)
            try Sys.mkdir(root, mode: 0o755, existOK: true)
            try ContainerRoot.mount(volume: volume, kind: config.kind, at: root)
            cleanups.append { try? Mounts.unmountOrDetach(root) }
            var external: [String] = []
            for v in config.volumes ?? [] {
                let target = "\(work)/volumes/\(v.key)"
                try Sys.mkdir("\(work)/volumes", mode: 0o700, existOK: true)
                let saved = "\(snapDir)/volumes/\(v.key)"
                if (m.volumes ?? []).contains(where: { $0.key == v.key && $0.snapshotted }) && backend.isVolume(saved) {
                    try backend.snapshot(saved, to: target, readOnly: false)
                    cleanups.append { try? backend.deleteVolume(target) }
                } else {
                    // Not in the snapshot: the host's directory as it is now,
                    // under an overlay whose upper layer takes the writes.
                    let layer = "\(work)/layers/\(v.key)"
                    for d in [target, "\(work)/layers", layer, "\(layer)/upper", "\(layer)/work"] {
                        try Sys.mkdir(d, mode: 0o700, existOK: true)
                    }
                    try Mounts.overlay(lower: v.host, upper: "\(layer)/upper", work: "\(layer)/work", at: target)
                    cleanups.append { try? Mounts.unmountOrDetach(target) }
                }
                external.append("mnt[\(v.key)]:\(target)")
            }
            let cg = try cgroup(c)
            try cg.create()
            cleanups.append { try? cg.killAll(); try? cg.remove() }

            // The container's output: drained, the end kept for the report.
            var out: [Int32] = [0, 0]
            try Sys.check("pipe", "output") { crsnap_pipe2(&out, O_CLOEXEC) }
            let tail = OutputTail()
            let drained = DispatchSemaphore(value: 0)
            let readEnd = out[0]
            DispatchQueue.global().async {
                tail.drain(readEnd)
                drained.signal()
            }
            var req = RestoreRequest(imagesDir: "\(snapDir)/images", root: root)
            if !m.log_pipe.isEmpty { req.inheritFds = [(key: m.log_pipe, fd: out[1])] }
            req.external = external
            if let address = config.bridgeAddress {
                // No bridge here: the pair's outer end stays in this namespace.
                req.external.append(try store.bridge().criuExternal(address: address.address, hostSide: "crsnap-test", bridged: false))
            }
            // In the host's network the connections' peers moved on; a
            // network namespace of the container's own comes back whole.
            req.closeTCP = !config.networkMode.ownNamespace || m.tcp_closed == true
            req.networkLock = config.networkMode.ownNamespace
            req.workDir = work  // CRIU's log goes here, not into the snapshot
            let handler = Unlinked.postRestore(root: root)
            let r0 = DispatchTime.now()
            let pid: pid_t
            do {
                pid = try Checkpointer(criu: try Criu.locate()).restore(req, handler: handler) { criuPid in try cg.add(criuPid) }
            } catch {
                Sys.close(out[1])
                throw error
            }
            Sys.close(out[1])
            report.restore_ms = milliseconds(since: r0)
            var reaped = false
            cleanups.append {
                try? cg.killAll()
                var status: Int32 = 0
                if !reaped { while waitpid(pid, &status, 0) < 0 && errno == EINTR {} }
                drained.wait()
                Sys.close(readEnd)
            }
            let restored = cg.procs().map { ($0, taskName($0)) }
            report.tasks = restored.count

            // Watch: the init must stay up.
            let w0 = DispatchTime.now()
            let deadline = w0.uptimeNanoseconds + UInt64(seconds * 1e9)
            var status: Int32 = 0
            while DispatchTime.now().uptimeNanoseconds < deadline {
                if waitpid(pid, &status, WNOHANG) == pid {
                    let ms = milliseconds(since: r0)
                    var problem = "the restored init (\(restored.first { $0.0 == pid }?.1 ?? "pid \(pid)")) exited with status \(Program.exitCode(status)) \(Int(ms)) ms after the restore"
                    usleep(50_000)
                    let said = tail.text
                    if !said.isEmpty { problem += "; its last output:\n" + said }
                    report.problem = problem
                    reaped = true
                    break
                }
                usleep(20_000)
            }
            report.watched_ms = milliseconds(since: w0)
            report.ended = restored.filter { kill($0.0, 0) != 0 }.map { $0.1 }
            report.ok = report.problem == nil
        } catch {
            report.problem = "\(error)"
        }
        return report
    }

    /// "PID COMM", the pid in the container's pid namespace.
    static func taskName(_ pid: pid_t) -> String {
        let nspid = Proc.field("NSpid", in: Proc.status(pid) ?? "")?.split(whereSeparator: { $0 == " " || $0 == "\t" }).last
        return "\(nspid.map(String.init) ?? "?") \(Proc.comm(pid))"
    }
}

/// The last few KiB a pipe carried, read until EOF.
final class OutputTail: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    static let keep = 2048

    func drain(_ fd: Int32) {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let k = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if k < 0 && errno == EINTR { continue }
            if k <= 0 { return }
            lock.lock()
            bytes += buf[0..<k]
            if bytes.count > Self.keep { bytes.removeFirst(bytes.count - Self.keep) }
            lock.unlock()
        }
    }

    var text: String {
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
