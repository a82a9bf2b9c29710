import CLibmount
import ContainerNetwork
import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// The per-container supervisor (`crsnap _monitor`), crsnap's conmon: it
/// starts the container's init, is the subreaper of everything the container
/// leaves behind, copies the container's output pipe into its log, and does
/// CRIU restores so that restored trees become its children and get the same
/// output pipe back. It exits when the container's init exits, unless a
/// rollback holds it, or a reboot system call inside asked for a restart: then it
/// starts the container's command again, in fresh namespaces over the same
/// files.
public final class Monitor {
    let container: Container
    let config: ContainerConfig
    let cgroup: FreezerCgroup
    var initPid: pid_t = 0
    var holding = false
    var shouldExit = false
    var pipeR: Int32 = -1
    var pipeW: Int32 = -1
    var logFd: Int32 = -1
    var listenFd: Int32 = -1
    var logPipe = ""
    /// A lazy-pages daemon started ahead of a lazy restore of these images
    /// (while the tasks still ran), for the restore to use.
    var pendingLazy: (images: String, daemon: LazyPagesDaemon)?
    /// How the init last ended (kept from the previous monitor's state).
    var lastExit: LastExit?
    /// Restarts after a reboot inside, and when the recent ones were.
    var restarts = 0
    var recentReboots: [Date] = []
    /// `crsnap stop` is killing the tree.
    var stopping = false

    init(container: Container) throws {
        self.container = container
        self.config = try container.config()
        self.cgroup = try container.cgroup()
        self.lastExit = container.state()?.lastExit
    }

    /// More restarts than this within `rebootWindow` seconds: a command that
    /// reboots at once each time; it is left stopped.
    static let rebootLimit = 5
    static let rebootWindow = 30.0

    /// Runs the monitor; fd 1 is a pipe to the `crsnap` that started it, which
    /// gets one line: "ready PID" or "error MESSAGE".
    public static func main(store: Store, name: String, idle: Bool) -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        let monitor: Monitor
        do {
            monitor = try Monitor(container: try Container(store: store, name: name))
            try monitor.start(idle: idle)
        } catch {
            let line = "error \(error)".replacingOccurrences(of: "\n", with: " / ") + "\n"
            _ = try? Sys.write(1, Array(line.utf8), "ready pipe")
            return 1
        }
        _ = try? Sys.write(1, Array("ready \(monitor.initPid)\n".utf8), "ready pipe")
        if let null = try? Sys.open("/dev/null", O_RDWR) {
            dup2(null, 1)
            Sys.close(null)
        }
        monitor.loop()
        return 0
    }

    func start(idle: Bool) throws {
        guard crsnap_set_child_subreaper() == 0 else {
            throw SystemError("prctl(PR_SET_CHILD_SUBREAPER)", "monitor", errno: errno)
        }
        logFd = try Sys.open(container.logPath, O_WRONLY | O_APPEND | O_CREAT, mode: 0o600)
        var fds: [Int32] = [0, 0]
        try Sys.check("pipe", "container output") { crsnap_pipe2(&fds, O_CLOEXEC) }
        pipeR = fds[0]
        pipeW = fds[1]
        _ = fcntl(pipeR, F_SETFL, fcntl(pipeR, F_GETFL) | O_NONBLOCK)
        logPipe = Proc.fdTarget(pid: getpid(), fd: pipeW) ?? ""
        listenFd = try MonitorChannel.listen(dir: container.dir)
        if idle {
            holding = true
            try writeState(.stopped)
            return
        }
        try launch()
    }

    /// Starts the container's command afresh in its root: at `run`, and for
    /// a rollback to a files-only snapshot.
    func launch() throws {
        let procs = try cgroup.openProcs()
        defer { Sys.close(procs) }
        var spec = ContainerSpec(root: container.rootMount, hostname: config.hostname, argv: config.command,
                                 env: config.env, logFd: pipeW, cgroupProcsFd: procs)
        spec.workdir = "/"
        spec.tmpfs = config.tmpfs ?? []
        spec.binds = (config.volumes ?? []).map { (source: $0.host, target: $0.container) }
        spec.user = config.user.map { (uid: $0.uid, gid: $0.gid) }
        spec.ownNetwork = config.networkMode.ownNamespace
        let (c, cfg) = (container, config)
        initPid = try Containers.launch(spec, prepare: cfg.networkMode == .bridge ? { pid in try Networks.attach(c, cfg, pid: pid) } : nil)
        try writeState(.running)
    }

    func writeState(_ status: ContainerState.Status) throws {
        let s = ContainerState(status: status, monitorPid: getpid(), initPid: initPid, logPipe: logPipe, updated: Date(),
                               monitorID: .of(getpid()), initID: initPid > 0 ? .of(initPid) : nil, lastExit: lastExit,
                               restarts: restarts > 0 ? restarts : nil)
        try JSON.write(s, to: container.statePath)
    }

    func note(_ text: String) {
        let f = ISO8601DateFormatter()
        let line = "[crsnap \(f.string(from: Date()))] \(text)\n"
        _ = try? Sys.write(logFd, Array(line.utf8), container.logPath)
    }

    func loop() {
        while !shouldExit {
            var fds = [pollfd(fd: pipeR, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: listenFd, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 2, 200)
            drainOutput()
            if fds[1].revents & Int16(POLLIN) != 0 { serveOne() }
            reap()
            watchdog()
        }
        drainOutput()
        try? writeState(.stopped)
        try? Sys.unlink("\(container.dir)/\(MonitorChannel.socketName)")
        exit(0)
    }

    func drainOutput() {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(pipeR, $0.baseAddress, $0.count) }
            if n <= 0 { return }
            _ = try? Sys.write(logFd, Array(buf[0..<n]), container.logPath)
        }
    }

    func reap() {
        var status: Int32 = 0
        while true {
            let p = waitpid(-1, &status, WNOHANG)
            if p <= 0 { return }
            if p == initPid {
                initPid = 0
                if holding {
                    // crsnap stopped it to checkpoint it: not an exit of its own.
                    note("container init exited with status \(Program.exitCode(status))")
                    try? writeState(.stopped)
                    continue
                }
                initEnded(status)
            }
        }
    }

    /// The init ended while nothing held the container: stopped for good,
    /// unless a reboot inside asked for a restart.
    func initEnded(_ status: Int32) {
        var exit = stopping ? LastExit(reason: .stopped) : LastExit(waitStatus: status)
        if exit.reason == .reboot {
            recentReboots = recentReboots.filter { exit.at.timeIntervalSince($0) < Monitor.rebootWindow } + [exit.at]
            if recentReboots.count > Monitor.rebootLimit { exit.reason = .rebootLoop }
        }
        lastExit = exit
        switch exit.reason {
        case .stopped:
            break  // the stop request says so
        case .reboot:
            do {
                // Its pid namespace ended with the init; whatever else was
                // in its cgroup goes too, then the command starts afresh.
                if !cgroup.procs().isEmpty { try cgroup.killAll() }
                restarts += 1
                try launch()
                note("\(exit.sentence): its command started afresh on its files in new namespaces (restart \(restarts), init pid \(initPid))")
                return
            } catch {
                note("\(exit.sentence): restarting it failed: \(error); stopped")
            }
        case .rebootLoop:
            note("\(exit.sentence): \(recentReboots.count) reboots within \(Int(Monitor.rebootWindow)) s, left stopped (a command that reboots at once?)")
        default:
            note(exit.sentence)
        }
        try? writeState(.stopped)
        shouldExit = true
    }

    var frozenSince: Date?

    /// If the container stays frozen with no CRIU attached to its tasks (the
    /// crsnap that froze it died), thaw it within a few seconds.
    func watchdog() {
        guard initPid != 0, cgroup.state() != "THAWED", !Recovery.traced(cgroup) else {
            frozenSince = nil
            return
        }
        let since = frozenSince ?? Date()
        frozenSince = since
        if Date().timeIntervalSince(since) >= Monitor.watchdogSeconds {
            do {
                try cgroup.thaw()
                note("watchdog: the container was frozen with no CRIU attached for \(Int(Monitor.watchdogSeconds)) s; thawed it")
            } catch {
                note("watchdog: could not thaw the container: \(error)")
            }
            frozenSince = nil
        }
    }

    static let watchdogSeconds = 3.0
    /// How long a lazy restore's daemon may take to bring all memory back.
    static let lazyPagesSeconds = 300.0
    /// How long a restore may wait for a file lock held outside the container.
    static let lockWaitSeconds = 3.0

    /// Starts CRIU's lazy-pages daemon for a restore of `images`, in a fresh
    /// work directory beside the container's state (its socket cannot be in
    /// the images directory, whose files are all checksummed; the logs stay
    /// there until the next lazy restore).
    func startLazyPages(criu: Criu, images: String) throws -> LazyPagesDaemon {
        let dir = "\(container.dir)/lazy-pages"
        try? FileManager.default.removeItem(atPath: dir)
        try Sys.mkdir(dir, mode: 0o700)
        return try LazyPagesDaemon(criu: criu, imagesDir: images, workDir: dir)
    }

    func serveOne() {
        let client = accept(listenFd, nil, nil)
        guard client >= 0 else { return }
        _ = fcntl(client, F_SETFD, FD_CLOEXEC)
        defer { Sys.close(client) }
        guard let request = try? MonitorChannel.receiveMessage(client) else { return }
        let reply = handle(request)
        _ = try? MonitorChannel.sendMessage(client, reply)
    }

    func handle(_ request: String) -> String {
        let parts = request.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        switch parts.first ?? "" {
        case "status":
            return "ok \(initPid)"
        case "hold":
            holding = true
            return "ok"
        case "release":
            pendingLazy = nil
            holding = false
            if initPid == 0 { shouldExit = true }
            return "ok"
        case "stop":
            holding = false
            stopping = true
            do {
                try cgroup.killAll()
            } catch {
                stopping = false
                return "err \(error)"
            }
            reap()
            shouldExit = true
            note("container stopped")
            return "ok"
        case "lazy-pages" where parts.count == 2:
            // Started before the tree is stopped: its start-up is not part
            // of the outage.
            pendingLazy = nil
            do {
                if let refusal = refusal(images: parts[1], root: container.rootMount) { return refusal }
                pendingLazy = (parts[1], try startLazyPages(criu: try Criu.locate(), images: parts[1]))
                return "ok"
            } catch {
                return "err \(error)"
            }
        case "launch" where parts.count == 2:
            // A files-only snapshot's rollback: its command, started afresh.
            reap()
            guard initPid == 0, cgroup.procs().isEmpty else { return "err the container's processes still run" }
            do {
                try launch()
                holding = false
                note("started \(config.command.joined(separator: " ")) afresh on the files of \(parts[1]) (a files-only snapshot)")
                return "ok \(initPid)"
            } catch {
                return "err \(error)"
            }
        case "restore" where parts.count >= 4:
            return restore(images: parts[1], root: parts[2], pipeKey: parts[3], label: parts.count > 4 ? parts[4] : "",
                           lazy: parts.count > 5 && parts[5] == "lazy", tcp: parts.count > 6 ? TCPRestore(word: parts[6]) : .restore)
        default:
            return "err unknown request \(parts.first ?? "")"
        }
    }

    /// Restoring images is a trust boundary: only this container's own
    /// snapshots, into its own root. The reply refusing anything else.
    func refusal(images: String, root: String) -> String? {
        let rel = images.hasPrefix(container.snapshotsDir + "/") ? String(images.dropFirst(container.snapshotsDir.count + 1)) : ""
        let parts = rel.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, Int(parts[0]) != nil, parts[1] == "images", root == container.rootMount else {
            return "err refusing to restore \(images) into \(root): not a snapshot of container \(container.name) in this store"
        }
        return nil
    }

    func restore(images: String, root: String, pipeKey: String, label: String, lazy: Bool, tcp: TCPRestore) -> String {
        let pending = pendingLazy
        pendingLazy = nil
        if let refusal = refusal(images: images, root: root) { return refusal }
        if initPid != 0 && cgroup.procs().isEmpty {
            // The tree was killed; its init may not have been reaped yet.
            var status: Int32 = 0
            while waitpid(initPid, &status, 0) < 0 && errno == EINTR {}
            note("container init exited with status \(Program.exitCode(status))")
            initPid = 0
        }
        guard initPid == 0 else { return "err the container is still running (pid \(initPid))" }
        defer { Networks.acceptConnections(container, config) }
        do {
            let criu = try Criu.locate()
            var req = RestoreRequest(imagesDir: images, root: root)
            if !pipeKey.isEmpty { req.inheritFds = [(key: pipeKey, fd: pipeW)] }
            req.external = (config.volumes ?? []).map { "mnt[\($0.key)]:\($0.host)" }
            req.external += try Networks.prepareRestore(container, config)
            Networks.refuseConnections(container, config)  // after prepareRestore made sure of the table
            req.closeTCP = tcp == .close
            req.networkLock = config.networkMode.ownNamespace
            let cg = cgroup
            // The snapshot's unlinked open files were placed in the root by
            // the rollback; CRIU opens them, and they are unlinked again
            // before the tasks run. Connections to peers outside the
            // container's own network are aborted then too, while CRIU still
            // locks that network: the tasks find them reset.
            let unlinked = Unlinked.postRestore(root: root)
            var outsideClosed = 0
            var handler: PostRestore? = tcp != .closeOutside ? unlinked : PostRestore { pid in
                try unlinked?.body(pid)
                outsideClosed = try Netlink.closeOutsideConnections(pid: pid)
            }
            if config.bridgeAddress != nil {
                // New connections are let through once the tasks run (CRIU
                // has unlocked their network), not only when CRIU has exited.
                handler = handler ?? PostRestore { _ in }
                let (c, cfg) = (container, config)
                handler?.resumed = { Networks.acceptConnections(c, cfg) }
            }
            // Processes that held file locks come back stopped, so that the
            // locks CRIU lost can be taken again before any of them runs.
            let locks = try FileLocks.recorded(imagesDir: images)
            req.leaveStopped = !locks.isEmpty
            try Faults.check("monitor.restore")
            let r0 = DispatchTime.now()
            var daemon: LazyPagesDaemon?
            if lazy, let p = pending, p.images == images, p.daemon.exitStatus() == nil {
                daemon = p.daemon
            } else {
                pending?.daemon.kill()
                if lazy { daemon = try startLazyPages(criu: criu, images: images) }
            }
            if let daemon {
                req.lazyPages = true
                req.workDir = daemon.workDir
            }
            let watch = LockWaitWatch(cgroup: cgroup, patience: Monitor.lockWaitSeconds)
            watch.start()
            let pid: pid_t
            do {
                pid = try Checkpointer(criu: criu).restore(req, handler: handler) { criuPid in try cg.add(criuPid) }
            } catch {
                daemon?.kill()
                let held = watch.stop()
                if !held.isEmpty { throw CrsnapError(.failed, LockWaitWatch.message(held, patience: Monitor.lockWaitSeconds)) }
                throw error
            }
            _ = watch.stop()
            let restoreMs = milliseconds(since: r0)
            // The tree runs (unless stopped for its locks) while the daemon
            // fills the rest of its memory; it stays ours until every page is in.
            var lazyMs = 0.0
            if let daemon {
                let l0 = DispatchTime.now()
                if Faults.action(at: "monitor.lazy-pages-killed") != nil { daemon.kill() }
                let status = daemon.wait(timeout: Monitor.lazyPagesSeconds) {
                    drainOutput()
                    daemon.wakeWaiters()
                }
                guard status == 0 else {
                    daemon.kill()
                    try? cgroup.killAll()
                    throw daemon.failure(status: status)
                }
                lazyMs = milliseconds(since: l0)
            }
            var repaired = ""
            var report = LockRepair.Report()
            if req.leaveStopped {
                do {
                    let tree = StoppedTree(root: pid, candidates: cgroup.procs())
                    var repair = LockRepair()
                    do { try Faults.check("monitor.lock-repair") } catch {
                        // As if the restore lost every lock and another process held them all.
                        repair.held = { _, _ in [] }
                        repair.take = { _, locks in locks.map { _ in EAGAIN } }
                    }
                    report = try repair.run(recorded: locks, tasks: tree.tasks)
                    try tree.resume(imagesDir: images)
                    repaired = String(format: "; %d file locks checked, %d taken again in %.1f ms",
                                      report.checked, report.repaired.count, report.milliseconds)
                } catch {
                    // Never a tree that runs without the locks it held.
                    try? cgroup.killAll()
                    throw error
                }
            }
            initPid = pid
            holding = false
            try writeState(.running)
            let closedNote = outsideClosed > 0 ? "; \(outsideClosed) TCP connection\(outsideClosed == 1 ? "" : "s") to peers outside closed" : ""
            note("restored \(label) (init pid \(pid)\(lazy ? String(format: "; memory on demand, all in after %.0f ms", lazyMs) : "")\(repaired)\(closedNote))")
            return String(format: "ok %d %d %d %.3f %.3f %.3f", pid, report.checked, report.repaired.count, report.milliseconds,
                          restoreMs, lazyMs)
        } catch {
            return "err \(error)"
        }
    }
}

/// Runs `body` with the restored tree's root pid at CRIU's post-restore
/// notification (the tasks are restored, not yet resumed), and `resumed`
/// at its post-resume one.
final class PostRestore: CriuNotifyHandler {
    let body: (pid_t) throws -> Void
    var resumed: (() -> Void)?
    init(_ body: @escaping (pid_t) throws -> Void) { self.body = body }
    func criuNotify(_ script: String, pid: Int32) throws {
        if script == "post-restore" { try body(pid) }
        if script == "post-resume" { resumed?() }
    }
}
