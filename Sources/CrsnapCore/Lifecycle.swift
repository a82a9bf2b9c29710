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
    /// Paths inside the container that get a tmpfs (e.g. /tmp, /dev/shm).
    public var tmpfs: [String] = []
    /// "HOST:CONTAINER" bind mounts.
    public var volumes: [String] = []
    /// Paths whose current contents survive a rollback.
    public var keep: [String] = []
    /// "UID[:GID]" the command runs as.
    public var user: String?
    /// host, none or bridge (see `NetworkMode`).
    public var network: String?
    /// The address a bridged container asks for (else the lowest free one).
    public var address: String?
    /// "HOSTPORT:CTRPORT[/tcp|udp]" forwarded to a bridged container.
    public var publish: [String] = []

    public init(name: String, command: [String], rootfs: String? = nil, hostname: String? = nil, env: [String] = [],
                tmpfs: [String] = []) {
        self.name = name
        self.command = command
        self.rootfs = rootfs
        self.hostname = hostname
        self.env = env
        self.tmpfs = tmpfs
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
        for t in o.tmpfs {
            guard isPlainPath(t), t != "/proc", !t.hasPrefix("/proc/") else {
                throw CrsnapError(.usage, "invalid --tmpfs \"\(t)\": expected an absolute path inside the container other than / and /proc, without '.', '..' or '//'")
            }
        }
        var seen = Set(o.tmpfs)
        for v in o.volumes {
            let (host, ctr) = try parseVolume(v)
            guard Sys.isDirectory(host) else {
                throw CrsnapError(.usage, "invalid --volume \"\(v)\": \(host) is not a directory")
            }
            guard seen.insert(ctr).inserted else {
                throw CrsnapError(.usage, "invalid --volume \"\(v)\": \(ctr) is already a mount point of this container")
            }
        }
        if Set(o.tmpfs).count != o.tmpfs.count {
            throw CrsnapError(.usage, "invalid --tmpfs: a path is given twice")
        }
        try validateKeep(o)
        if let u = o.user { _ = try UserSpec(parsing: u) }
        let mode = try o.network.map(NetworkMode.init(parsing:)) ?? .host
        _ = try Networks.parsePublish(o.publish)
        if mode != .bridge, let flag = o.address != nil ? "--address" : !o.publish.isEmpty ? "--publish" : nil {
            throw CrsnapError(.usage, "\(flag) needs --network bridge (the container's own address on the host's bridge)")
        }
        if let r = o.rootfs {
            guard r.hasPrefix("/") else { throw CrsnapError(.usage, "invalid --rootfs \"\(r)\": the path must be absolute") }
            guard Sys.isDirectory(r) else { throw CrsnapError(.usage, "invalid --rootfs \"\(r)\": not a directory") }
        }
    }

    /// An absolute path other than "/", without "." or ".." components, "//" or a trailing "/".
    static func isPlainPath(_ p: String) -> Bool {
        let parts = p.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        return p.hasPrefix("/") && !parts.isEmpty && !p.contains("\0")
            && !parts.contains { $0.isEmpty || $0 == "." || $0 == ".." }
    }

    /// --keep paths: plain paths in the root's own files (not /proc, /dev,
    /// a tmpfs or a volume, whose contents are not there), none inside another.
    static func validateKeep(_ o: RunOptions) throws {
        func inside(_ p: String, _ q: String) -> Bool { p == q || p.hasPrefix(q + "/") }
        let mounts = o.tmpfs.map { ("--tmpfs", $0) } + o.volumes.compactMap { v in (try? parseVolume(v)).map { ("--volume", $0.1) } }
        for k in o.keep {
            func bad(_ why: String) -> CrsnapError { CrsnapError(.usage, "invalid --keep \"\(k)\": \(why)") }
            guard isPlainPath(k) else { throw bad("expected an absolute path inside the container other than /, without '.', '..' or '//'") }
            if let sys = ["/proc", "/dev", "/sys"].first(where: { inside(k, $0) }) {
                throw bad("\(sys) is not part of the container's files")
            }
            if let (flag, m) = mounts.first(where: { inside(k, $0.1) }) {
                throw bad("it overlaps \(flag) \(m), whose contents are not in the container's root")
            }
            if let other = o.keep.first(where: { $0 != k && inside(k, $0) }) {
                throw bad("it is inside --keep \(other)")
            }
        }
        if Set(o.keep).count != o.keep.count {
            throw CrsnapError(.usage, "invalid --keep: a path is given twice")
        }
    }

    /// "HOST:CONTAINER", both absolute, CONTAINER not / or under /proc.
    static func parseVolume(_ v: String) throws -> (String, String) {
        let parts = v.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        func bad(_ why: String) -> CrsnapError { CrsnapError(.usage, "invalid --volume \"\(v)\": \(why)") }
        guard parts.count == 2 else { throw bad("expected HOST:CONTAINER") }
        for p in parts {
            let comps = p.split(separator: "/")
            guard p.hasPrefix("/"), !comps.contains(".."), !comps.contains("."), !p.contains("\0") else {
                throw bad("paths must be absolute, without '.' or '..'")
            }
        }
        let ctr = (parts[1] as NSString).standardizingPath
        guard ctr != "/", ctr != "/proc", !ctr.hasPrefix("/proc/") else { throw bad("cannot mount over / or /proc") }
        return ((parts[0] as NSString).standardizingPath, ctr)
    }

    /// Creates the container and starts its command under a monitor.
    public static func run(store: Store, _ o: RunOptions) throws {
        try validate(o)
        let c = try Container(store: store, name: o.name)
        if Sys.exists(c.dir) {
            throw CrsnapError(.conflict, "container \"\(o.name)\" already exists in store \(store.path) (crsnap rm \(o.name) first)")
        }
        if try o.network.map(NetworkMode.init(parsing:)) == .bridge {
            // Bad --address or --publish: said before anything is made (and
            // checked again, under the lock, when the lease is written).
            _ = try Networks.lease(store: store, requested: o.address, publish: try Networks.parsePublish(o.publish))
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
            // A tmpfs mount point must exist in the root before the container starts.
            for t in o.tmpfs { try ContainerRoot.makeMountPoint(volume: c.volume, kind: kind, path: t) }
            var volumes: [Volume] = []
            for (i, v) in o.volumes.enumerated() {
                let (host, ctr) = try parseVolume(v)
                try ContainerRoot.makeMountPoint(volume: c.volume, kind: kind, path: ctr)
                // A btrfs subvolume on the store's filesystem is snapshotted with
                // the rest; anything else is declared to CRIU and left alone.
                let snap = store.backend is BtrfsBackend && Btrfs.isSubvolume(host) && sameFilesystem(host, store.root)
                volumes.append(Volume(host: host, container: ctr, key: "vol\(i)", snapshotted: snap))
            }
            let cg = try c.cgroup()
            try cg.create()
            revert.push("remove cgroup \(cg.path)") { try cg.killAll(); try cg.remove() }
            try Sys.mkdir(c.rootMount, mode: 0o755, existOK: true)
            try ContainerRoot.mount(volume: c.volume, kind: kind, at: c.rootMount)
            revert.push("unmount \(c.rootMount)") { try Mounts.unmount(c.rootMount, lazy: true) }
            var env = ContainerSpec.defaultEnv.filter { d in !o.env.contains { $0.split(separator: "=").first == d.split(separator: "=").first } }
            env += o.env
            var config = ContainerConfig(name: o.name, kind: kind, command: o.command, env: env,
                                         hostname: o.hostname ?? o.name, created: Date(), rootfsSource: o.rootfs,
                                         tmpfs: o.tmpfs.isEmpty ? nil : o.tmpfs, volumes: volumes.isEmpty ? nil : volumes,
                                         keep: o.keep.isEmpty ? nil : o.keep, user: try o.user.map(UserSpec.init(parsing:)),
                                         network: try o.network.map(NetworkMode.init(parsing:)))
            config.id = UUID().uuidString.lowercased()
            // A bridged container's lease is its config: written while no
            // other run can choose the same address or port.
            let netLock = config.networkMode == .bridge ? try store.networkLock() : nil
            if netLock != nil {
                let publish = try Networks.parsePublish(o.publish)
                config.address = try Networks.lease(store: store, requested: o.address, publish: publish).description
                config.publish = publish.isEmpty ? nil : publish
            }
            try JSON.write(config, to: c.configPath)
            netLock?.release()
            revert.push("release the network of \(o.name)") { [config] in try Networks.release(c, config) }
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

    /// Both paths are on the same btrfs filesystem (so one can be snapshotted
    /// into the other). statfs's fsid differs per subvolume on btrfs, so the
    /// mount table's source device decides.
    static func sameFilesystem(_ a: String, _ b: String) -> Bool {
        guard Btrfs.isBtrfs(a), Btrfs.isBtrfs(b),
              let ma = Mounts.mountContaining(a), let mb = Mounts.mountContaining(b) else { return false }
        return ma.source == mb.source
    }

    static func selfExecutable() throws -> String { try Sys.readLink("/proc/self/exe") }

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
        try Container.locked(store: store, name: name) { c in try stopLocked(c) }
    }

    static func stopLocked(_ c: Container) throws {
        if c.monitorAlive, let s = c.state() {
            let reply = try MonitorChannel.request(dir: c.dir, "stop")
            guard reply.hasPrefix("ok") else { throw CrsnapError(.failed, "stopping \(c.name): \(reply.dropFirst(4))") }
            let deadline = Date().addingTimeInterval(10)
            while s.monitor.isAlive && Date() < deadline { usleep(10_000) }
        }
        let cg = try c.cgroup()
        if cg.exists { try cg.killAll() }
        // Processes that went without their monitor (a reboot, an ended pid
        // namespace) leave a state that still says running: say stopped.
        if !c.monitorAlive, var s = c.state(), s.status != .stopped {
            s.status = .stopped
            s.updated = Date()
            try JSON.write(s, to: c.statePath)
        }
    }

    /// Removes a stopped container with all its snapshots. `keepHostSide`:
    /// a bridged container's host side (its veth, named by its address, its
    /// published ports, the bridge) is left as it is, because a container
    /// of another store on this host holds it now (a migrate between two
    /// stores of one network namespace); only the lease goes, with the
    /// container.
    public static func remove(store: Store, name: String, force: Bool, keepHostSide: Bool = false) throws {
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
        if !keepHostSide, let config = try? c.config() { try Networks.release(c, config) }
        if Mounts.isMountPoint(c.rootMount) { try Mounts.unmount(c.rootMount, lazy: true) }
        for n in c.snapshotNumbers() { try Snapshots.deleteLocked(c, n) }
        for volume in [c.volume, "\(c.dir)/fs.prev"] where store.backend.isVolume(volume) {
            try store.backend.deleteVolume(volume)
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
        return try Containers.exec(in: pid, argv: command, env: c.environment)
    }
}
