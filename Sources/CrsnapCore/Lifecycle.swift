import CLibmount
import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

public struct RunOptions {
    public var name: String
    public var command: [String]
    public var rootfs: String?
    public var hostname: String?
    public var env: [String] = []

    public init(name: String, command: [String], rootfs: String? = nil, hostname: String? = nil, env: [String] = []) {
        self.name = name
        self.command = command
        self.rootfs = rootfs
        self.hostname = hostname
        self.env = env
    }
}

/// Starting, stopping and removing containers.
public enum Lifecycle {
    /// Validates everything `run` will use before anything is created.
    public static func validate(_ o: RunOptions) throws {
        try Names.validate(o.name)
        guard let first = o.command.first, !first.isEmpty else {
            throw CrsnapError(.usage, "no command given: use crsnap run NAME -- CMD [ARG...]")
        }
        if let h = o.hostname { try Names.validate(h, what: "hostname") }
        for e in o.env where !e.contains("=") || e.hasPrefix("=") {
            throw CrsnapError(.usage, "invalid --env \"\(e)\": expected KEY=VALUE")
        }
        if let r = o.rootfs {
            guard r.hasPrefix("/") else { throw CrsnapError(.usage, "invalid --rootfs \"\(r)\": the path must be absolute") }
            guard Sys.isDirectory(r) else { throw CrsnapError(.usage, "invalid --rootfs \"\(r)\": not a directory") }
        }
    }

    /// Creates the container and starts its command under a monitor.
    public static func run(store: Store, _ o: RunOptions) throws {
        try validate(o)
        let c = try Container(store: store, name: o.name)
        if Sys.exists(c.dir) {
            throw CrsnapError(.conflict, "container \"\(o.name)\" already exists in store \(store.path) (crsnap rm \(o.name) first)")
        }
        let revert = Revert()
        try revert.run {
            try Sys.mkdir(c.dir, mode: 0o700)
            revert.push("remove \(c.dir)") { try Sys.removeTree(c.dir) }
            let lock = try c.lock()
            defer { lock.release() }
            let kind: RootKind = o.rootfs == nil ? .overlay : .subvolume
            try makeVolume(store: store, container: c, rootfs: o.rootfs)
            revert.push("delete volume \(c.volume)") { try store.backend.deleteVolume(c.volume) }
            try ContainerRoot.prepare(volume: c.volume, kind: kind)
            let cg = try c.cgroup()
            try cg.create()
            revert.push("remove cgroup \(cg.path)") { try cg.killAll(); try cg.remove() }
            try Sys.mkdir(c.rootMount, mode: 0o755, existOK: true)
            try ContainerRoot.mount(volume: c.volume, kind: kind, at: c.rootMount)
            revert.push("unmount \(c.rootMount)") { try Mounts.unmount(c.rootMount, lazy: true) }
            var env = ContainerSpec.defaultEnv.filter { d in !o.env.contains { $0.split(separator: "=").first == d.split(separator: "=").first } }
            env += o.env
            let config = ContainerConfig(name: o.name, kind: kind, command: o.command, env: env,
                                         hostname: o.hostname ?? o.name, created: Date(), rootfsSource: o.rootfs)
            try JSON.write(config, to: c.configPath)
            _ = try spawnMonitor(c, idle: false)
        }
    }

    static func makeVolume(store: Store, container c: Container, rootfs: String?) throws {
        guard let src = rootfs else {
            try store.backend.createVolume(c.volume)
            return
        }
        // A subvolume on the store's own filesystem is snapshotted (O(1));
        // anything else is copied with reflinks where the filesystem allows.
        if store.backend.isVolume(src), sameFilesystem(src, store.root) {
            try store.backend.snapshot(src, to: c.volume, readOnly: false)
            return
        }
        try store.backend.createVolume(c.volume)
        do {
            try Program.run(["cp", "-a", "--reflink=auto", "--", "\(src)/.", "\(c.volume)/"])
        } catch {
            throw CrsnapError(.failed, "copying --rootfs \(src) into the container volume: \(error)")
        }
    }

    static func sameFilesystem(_ a: String, _ b: String) -> Bool {
        var sa = statfs(), sb = statfs()
        guard statfs(a, &sa) == 0, statfs(b, &sb) == 0 else { return false }
        return withUnsafeBytes(of: sa.f_fsid) { x in withUnsafeBytes(of: sb.f_fsid) { y in x.elementsEqual(y) } }
    }

    static func selfExecutable() throws -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { throw SystemError("readlink", "/proc/self/exe", errno: errno) }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Starts `crsnap _monitor` detached (its own session, no inherited stdio)
    /// and waits for its first line. Returns the container's init pid (0 when idle).
    @discardableResult
    static func spawnMonitor(_ c: Container, idle: Bool) throws -> pid_t {
        let exe = try selfExecutable()
        var fds: [Int32] = [0, 0]
        try Sys.check("pipe", "monitor") { crsnap_pipe2(&fds, O_CLOEXEC) }
        let null = try Sys.open("/dev/null", O_RDWR)
        let monlog = try Sys.open(c.monitorLogPath, O_WRONLY | O_CREAT | O_APPEND, mode: 0o600)
        var argv = [exe, "_monitor", "--store", c.store.path, c.name]
        if idle { argv.append("--idle") }
        let pid = Program.spawn(path: exe, argv: argv, env: ProcessInfo.processInfo.environment,
                                fdmap: [null, fds[1], monlog], newSession: true)
        let e = errno
        Sys.close(fds[1])
        Sys.close(null)
        Sys.close(monlog)
        defer { Sys.close(fds[0]) }
        guard pid > 0 else { throw SystemError("spawn", "crsnap monitor", errno: e) }
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while read(fds[0], &byte, 1) == 1 && byte != 0x0A { line.append(byte) }
        // The monitor outlives us; it is reparented when we exit. Reap it now
        // only if it already failed.
        let text = String(decoding: line, as: UTF8.self)
        if text.hasPrefix("ready ") {
            return pid_t(text.dropFirst(6)) ?? 0
        }
        _ = Program.wait(pid)
        let tail = ((try? Sys.readText(c.monitorLogPath)) ?? "").split(separator: "\n").suffix(5).joined(separator: "\n")
        let reason = text.hasPrefix("error ") ? String(text.dropFirst(6)) : "the monitor exited without a word\(tail.isEmpty ? "" : ": \(tail)")"
        throw CrsnapError(.failed, "container \"\(c.name)\" did not start: \(reason)")
    }

    /// Stops the container's processes (SIGKILL to the tree) and its monitor.
    public static func stop(store: Store, name: String) throws {
        let c = try Container(store: store, name: name)
        try c.mustExist()
        let lock = try c.lock()
        defer { lock.release() }
        try Recovery.finishInterrupted(c)
        try stopLocked(c)
    }

    static func stopLocked(_ c: Container) throws {
        if c.monitorAlive, let s = c.state() {
            let reply = try MonitorChannel.request(dir: c.dir, "stop")
            guard reply.hasPrefix("ok") else { throw CrsnapError(.failed, "stopping \(c.name): \(reply.dropFirst(4))") }
            let deadline = Date().addingTimeInterval(10)
            while Proc.isAlive(s.monitorPid) && Date() < deadline { usleep(10_000) }
        }
        let cg = try c.cgroup()
        if cg.exists { try cg.killAll() }
    }

    /// Removes a stopped container with all its snapshots.
    public static func remove(store: Store, name: String, force: Bool) throws {
        let c = try Container(store: store, name: name)
        try c.mustExist()
        let lock = try c.lock()
        defer { lock.release() }
        try Recovery.finishInterrupted(c)
        if c.isRunning {
            guard force else {
                throw CrsnapError(.conflict, "container \"\(name)\" is running: crsnap stop \(name) first, or rm --force")
            }
        }
        try stopLocked(c)
        if Mounts.isMountPoint(c.rootMount) { try Mounts.unmount(c.rootMount, lazy: true) }
        for n in c.snapshotNumbers() { try Snapshots.deleteLocked(c, n) }
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: c.dir)) ?? []
            where store.backend.isVolume("\(c.dir)/\(entry)") {
            try store.backend.deleteVolume("\(c.dir)/\(entry)")
        }
        let staging = (try? FileManager.default.contentsOfDirectory(atPath: c.snapshotsDir)) ?? []
        for entry in staging where store.backend.isVolume("\(c.snapshotsDir)/\(entry)/fs") {
            try store.backend.deleteVolume("\(c.snapshotsDir)/\(entry)/fs")
        }
        let cg = try c.cgroup()
        if cg.exists { try cg.remove() }
        lock.release()
        try Sys.removeTree(c.dir)
    }

    /// Runs a command inside the container's namespaces; returns its exit status.
    public static func exec(store: Store, name: String, command: [String]) throws -> Int32 {
        let c = try Container(store: store, name: name)
        guard !command.isEmpty else { throw CrsnapError(.usage, "no command given: use crsnap exec NAME -- CMD [ARG...]") }
        let pid = try c.runningInit()
        let env = (try? c.config().env) ?? ContainerSpec.defaultEnv
        return try Containers.exec(in: pid, argv: command, env: env)
    }
}
