import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A container's freezer cgroup (v1 freezer hierarchy where mounted, else cgroup v2).
public struct FreezerCgroup: Sendable {
    public let path: String
    public let version: Int

    public init(path: String, version: Int) {
        self.path = path
        self.version = version
    }

    /// The freezer hierarchy new containers get: v1's freezer controller if
    /// it is mounted, else the cgroup2 mount. CRSNAP_FREEZER=v1 or v2 picks
    /// one of them where both are mounted (tests and benchmarks run both).
    public static func hierarchy(env: [String: String] = ProcessInfo.processInfo.environment) throws -> (root: String, version: Int) {
        let all = try hierarchies()
        let wanted = env["CRSNAP_FREEZER"].flatMap { $0 == "v1" ? 1 : $0 == "v2" ? 2 : nil }
        if let wanted, let h = all.first(where: { $0.version == wanted }) { return h }
        if let h = all.first { return h }
        throw SystemError("find", "a freezer cgroup hierarchy (neither cgroup v1 freezer nor cgroup2 is mounted)", errno: ENOENT)
    }

    /// The mounted freezer hierarchies, v1's freezer first.
    static func hierarchies() throws -> [(root: String, version: Int)] {
        let table = try Mounts.table()
        var out: [(root: String, version: Int)] = []
        if let v1 = table.first(where: { $0.fstype == "cgroup" && $0.options.split(separator: ",").contains("freezer") }) {
            out.append((v1.target, 1))
        }
        if let v2 = table.first(where: { $0.fstype == "cgroup2" }) {
            out.append((v2.target, 2))
        }
        return out
    }

    /// The cgroup for container `id`: the one it has in either hierarchy,
    /// else where `hierarchy()` would make it (not created yet).
    public static func forContainer(_ id: String) throws -> FreezerCgroup {
        for h in try hierarchies() where Sys.isDirectory("\(h.root)/crsnap/\(id)") {
            return FreezerCgroup(path: "\(h.root)/crsnap/\(id)", version: h.version)
        }
        let (root, version) = try hierarchy()
        return FreezerCgroup(path: "\(root)/crsnap/\(id)", version: version)
    }

    public func create() throws {
        try Sys.mkdir((path as NSString).deletingLastPathComponent, mode: 0o755, existOK: true)
        try Sys.mkdir(path, mode: 0o755, existOK: true)
    }

    public func remove() throws {
        try Sys.rmdir(path)
    }

    public var exists: Bool { Sys.isDirectory(path) }

    /// The pids (host namespace) in the cgroup.
    public func procs() -> [pid_t] {
        guard let text = try? Sys.readText("\(path)/cgroup.procs") else { return [] }
        return text.split(separator: "\n").compactMap { pid_t($0) }
    }

    /// An fd on cgroup.procs for the container's first process to join by.
    public func openProcs() throws -> Int32 {
        try Sys.open("\(path)/cgroup.procs", O_WRONLY)
    }

    public func add(_ pid: pid_t) throws {
        let fd = try openProcs()
        defer { Sys.close(fd) }
        try Sys.write(fd, Array("\(pid)".utf8), "\(path)/cgroup.procs")
    }

    /// "THAWED", "FREEZING" or "FROZEN" (cgroup v2: FROZEN once
    /// cgroup.events says every task is frozen, FREEZING while it is asked).
    public func state() -> String {
        if version == 1 {
            return ((try? Sys.readText("\(path)/freezer.state")) ?? "THAWED")
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }
        if isFrozen((try? Sys.readText("\(path)/\(frozenFile)")) ?? "") { return "FROZEN" }
        let asked = ((try? Sys.readText("\(path)/cgroup.freeze")) ?? "0").trimmingCharacters(in: .whitespacesAndNewlines)
        return asked == "1" ? "FREEZING" : "THAWED"
    }

    public func thaw() throws { try ask(frozen: false) }

    /// Asks the kernel to freeze or thaw the cgroup (v1 freezer.state, v2 cgroup.freeze).
    func ask(frozen: Bool) throws {
        let (file, value) = version == 1 ? ("freezer.state", frozen ? "FROZEN" : "THAWED") : ("cgroup.freeze", frozen ? "1" : "0")
        let fd = try Sys.open("\(path)/\(file)", O_WRONLY)
        defer { Sys.close(fd) }
        try Sys.write(fd, Array(value.utf8), "\(path)/\(file)")
    }

    /// The file that says whether every task is frozen, and how to read it.
    var frozenFile: String { version == 1 ? "freezer.state" : "cgroup.events" }
    func isFrozen(_ text: String) -> Bool {
        version == 1 ? text.hasPrefix("FROZEN") : text.split(separator: "\n").contains("frozen 1")
    }

    /// Freezes every task of the cgroup and returns once all of them are
    /// frozen, looking every 50 µs at first and never less often than every
    /// millisecond (CRIU's own loop sleeps 100 ms between looks). Past
    /// `timeout` seconds the cgroup is thawed again and the error names the
    /// tasks that did not freeze. `stuck` (a test hook) makes the wait see
    /// the freeze never finish.
    public func freeze(timeout: Double, stuck: Bool = false) throws {
        try checkFreezable()
        try ask(frozen: true)
        // One fd read again and again: the wait must look often and cheaply.
        let state = try Sys.open("\(path)/\(frozenFile)", O_RDONLY)
        defer { Sys.close(state) }
        let start = DispatchTime.now().uptimeNanoseconds
        var step: UInt32 = 50
        var buf = [UInt8](repeating: 0, count: 512)
        while true {
            let n = buf.withUnsafeMutableBytes { pread(state, $0.baseAddress, $0.count, 0) }
            if n < 0 { throw SystemError("read", "\(path)/\(frozenFile)", errno: errno) }
            if isFrozen(String(decoding: buf[0..<n], as: UTF8.self)) && !stuck { return }
            if Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 >= timeout { break }
            usleep(step)
            step = min(step * 2, 1000)
        }
        let busy = procs().filter { !Proc.isFrozen($0) }
        try? thaw()
        throw FreezeTimeout(cgroup: path, seconds: timeout,
                            running: busy.prefix(5).map { "\($0) (\(Proc.comm($0)), in \(Proc.wchan($0) ?? "?"))" })
    }

    /// SIGKILLs every task and waits until the cgroup is empty (a frozen
    /// cgroup is thawed so the kill can land).
    public func killAll(timeout: Double = 10) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let pids = procs()
            if pids.isEmpty { return }
            for pid in pids { try Safety.signal(pid, SIGKILL) }
            if state() != "THAWED" { try? thaw() }
            if Date() > deadline {
                throw SystemError("kill the tasks of", path, errno: EBUSY)
            }
            usleep(10_000)
        }
    }
}

/// A freeze that did not finish in time; the cgroup was thawed again.
public struct FreezeTimeout: Error, CustomStringConvertible {
    public let cgroup: String
    public let seconds: Double
    /// Some of the tasks not frozen yet: "PID (COMM, in WCHAN)".
    public let running: [String]

    public var description: String {
        "the tasks of \(cgroup) did not all freeze within \(String(format: "%g", seconds)) s"
            + (running.isEmpty ? "" : " (not frozen: " + running.joined(separator: ", ") + ")")
            + "; they were thawed again"
    }
}
