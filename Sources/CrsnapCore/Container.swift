import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// One container in a store: where its files are and what state it is in.
public struct Container {
    public let store: Store
    public let name: String

    public init(store: Store, name: String) throws {
        try Names.validate(name)
        self.store = store
        self.name = name
    }

    public var dir: String { store.containerDir(name) }
    public var configPath: String { "\(dir)/config.json" }
    public var statePath: String { "\(dir)/state.json" }
    public var lockPath: String { "\(dir)/lock" }
    public var journalPath: String { "\(dir)/journal.json" }
    public var volume: String { "\(dir)/fs" }
    public var rootMount: String { "\(dir)/root" }
    public var logPath: String { "\(dir)/log" }
    public var monitorLogPath: String { "\(dir)/monitor.log" }
    public var nextIDPath: String { "\(dir)/next-id" }
    public var snapshotsDir: String { "\(dir)/snapshots" }
    public func snapshotDir(_ n: Int) -> String { "\(snapshotsDir)/\(n)" }

    public var exists: Bool { Sys.isDirectory(dir) && Sys.exists(configPath) }

    /// Fails with a not-found error naming the container.
    public func mustExist() throws {
        guard exists else {
            throw CrsnapError(.notFound, "no container named \"\(name)\" in store \(store.path)")
        }
    }

    public func config() throws -> ContainerConfig {
        try mustExist()
        return try JSON.read(ContainerConfig.self, from: configPath)
    }

    /// The environment its command runs with (the defaults when the config
    /// cannot be read): for what runs inside it later too.
    public var environment: [String] { (try? config().env) ?? ContainerSpec.defaultEnv }

    public func state() -> ContainerState? {
        try? JSON.read(ContainerState.self, from: statePath)
    }

    public func cgroup() throws -> FreezerCgroup {
        try FreezerCgroup.forContainer("\(store.id).\(name)")
    }

    public func lock() throws -> FileLock {
        try FileLock(path: lockPath)
    }

    /// Runs `body` on an existing container with its lock held, after
    /// finishing or undoing any operation that was interrupted on it.
    static func locked<T>(store: Store, name: String, _ body: (Container) throws -> T) throws -> T {
        let c = try Container(store: store, name: name)
        try c.mustExist()
        let lock = try c.lock()
        defer { lock.release() }
        try Recovery.finishInterrupted(c)
        return try body(c)
    }

    /// Running means: the monitor is alive and so is the container's init —
    /// the very processes recorded, not whatever has their numbers now.
    public var isRunning: Bool { liveness.running }

    public var monitorAlive: Bool {
        guard let s = state() else { return false }
        return s.monitor.isAlive
    }

    /// Why a container recorded as running (or starting) is not: its
    /// processes are gone — a reboot, or the pid namespace that held them
    /// ended — whatever pid now has their numbers. Nil otherwise.
    public var goneReason: String? { liveness.goneReason }

    /// Both of the above from one read of the state.
    public var liveness: (running: Bool, goneReason: String?) {
        guard let s = state(), s.status != .stopped else { return (false, nil) }
        if let why = s.monitor.goneReason() { return (false, "its processes are gone: the monitor's \(why)") }
        guard s.status == .running else { return (false, nil) }
        if let why = s.initProcess.goneReason() { return (false, "its processes are gone: the init's \(why)") }
        return (true, nil)
    }

    /// The running init's host pid, or a conflict error saying the container is stopped.
    public func runningInit() throws -> pid_t {
        try mustExist()
        guard isRunning, let s = state() else {
            throw CrsnapError(.conflict, "container \"\(name)\" is not running")
        }
        return s.initPid
    }

    // MARK: snapshots

    public func snapshotNumbers() -> [Int] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: snapshotsDir)) ?? []
        return names.compactMap { Int($0) }.filter { Sys.exists("\(snapshotDir($0))/manifest.json") }.sorted()
    }

    public func manifest(_ n: Int) throws -> Manifest {
        let path = "\(snapshotDir(n))/manifest.json"
        guard Sys.exists(path) else {
            throw CrsnapError(.notFound, "no snapshot \(name)@\(n) in store \(store.path)")
        }
        return try JSON.read(Manifest.self, from: path)
    }

    public func manifests() -> [Manifest] {
        snapshotNumbers().compactMap { try? manifest($0) }
    }

    /// The next snapshot number: past every number ever handed out.
    func nextNumber() -> Int {
        let recorded = (try? Sys.readText(nextIDPath)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 1
        let existing = ((try? FileManager.default.contentsOfDirectory(atPath: snapshotsDir)) ?? [])
            .compactMap { Int($0.split(separator: "-").last ?? "") }.max() ?? 0
        return max(recorded, existing + 1)
    }
}
