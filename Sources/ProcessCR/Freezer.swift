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

    /// The freezer hierarchy of this machine: v1's freezer controller if it is
    /// mounted (CRIU freezes through it faster), else the cgroup2 mount.
    public static func hierarchy() throws -> (root: String, version: Int) {
        let table = try Mounts.table()
        if let v1 = table.first(where: { $0.fstype == "cgroup" && $0.options.split(separator: ",").contains("freezer") }) {
            return (v1.target, 1)
        }
        if let v2 = table.first(where: { $0.fstype == "cgroup2" }) {
            return (v2.target, 2)
        }
        throw SystemError("find", "a freezer cgroup hierarchy (neither cgroup v1 freezer nor cgroup2 is mounted)", errno: ENOENT)
    }

    /// The cgroup for container `id` (not created yet).
    public static func forContainer(_ id: String) throws -> FreezerCgroup {
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

    /// "THAWED", "FREEZING" or "FROZEN".
    public func state() -> String {
        if version == 1 {
            return ((try? Sys.readText("\(path)/freezer.state")) ?? "THAWED")
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let v = ((try? Sys.readText("\(path)/cgroup.freeze")) ?? "0").trimmingCharacters(in: .whitespacesAndNewlines)
        return v == "1" ? "FROZEN" : "THAWED"
    }

    public func thaw() throws {
        let (file, value) = version == 1 ? ("freezer.state", "THAWED") : ("cgroup.freeze", "0")
        let fd = try Sys.open("\(path)/\(file)", O_WRONLY)
        defer { Sys.close(fd) }
        try Sys.write(fd, Array(value.utf8), "\(path)/\(file)")
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
