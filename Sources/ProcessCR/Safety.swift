import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Preconditions that keep a mistake in crsnap (a stale pid, a wrong cgroup
/// path, a container that shares the host's network) from reaching the
/// machine: each primitive that signals, freezes or locks checks its target
/// here first. The checks are pure functions of what they are shown, so the
/// unit tests exercise them without root.
public enum Safety {
    /// Why `pid` must not be signalled, or nil: pid 0 and negative pids name
    /// process groups (kill(-1) is every process), pid 1 is the init of the
    /// pid namespace crsnap runs in — on a host, the machine's own.
    public static func signalRefusal(_ pid: pid_t) -> String? {
        if pid <= 0 { return "pid \(pid) names a process group or every process, not one process" }
        if pid == 1 { return "pid 1 is the init of crsnap's own pid namespace" }
        return nil
    }

    /// kill(2) for one process; refuses pid 0, 1 and negative pids.
    public static func signal(_ pid: pid_t, _ sig: Int32) throws {
        if let why = signalRefusal(pid) {
            throw SystemError("refuse to send signal \(sig) to", "pid \(pid) (\(why))", errno: EPERM)
        }
        if kill(pid, sig) != 0 && errno != ESRCH {
            throw SystemError("send signal \(sig) to", "pid \(pid)", errno: errno)
        }
    }

    /// What freezing a cgroup would catch besides a container.
    public struct FreezeTarget: Equatable {
        /// The cgroup to freeze, and the crsnap/ directory of its hierarchy
        /// under which crsnap makes containers' cgroups.
        public var path: String
        public var crsnapRoot: String
        /// Its tasks, and crsnap's own pid.
        public var procs: [pid_t]
        public var selfPid: pid_t
        /// The cgroups (same hierarchy, absolute paths) crsnap and pid 1 are in.
        public var selfCgroup: String?
        public var initCgroup: String?

        public init(path: String, crsnapRoot: String, procs: [pid_t], selfPid: pid_t, selfCgroup: String?, initCgroup: String?) {
            self.path = path
            self.crsnapRoot = crsnapRoot
            self.procs = procs
            self.selfPid = selfPid
            self.selfCgroup = selfCgroup
            self.initCgroup = initCgroup
        }
    }

    /// Why freezing `t.path` is unsafe, or nil. Only a container's own
    /// cgroup under crsnap/ may be frozen, and never one that holds crsnap
    /// itself or pid 1 — directly, or below it (a freezer freezes its
    /// descendants too).
    public static func freezeRefusal(_ t: FreezeTarget) -> String? {
        let path = normalized(t.path), root = normalized(t.crsnapRoot)
        guard path.hasPrefix(root + "/"), !path.dropFirst(root.count + 1).isEmpty else {
            return "\(t.path) is not a container's cgroup under \(t.crsnapRoot)"
        }
        if t.procs.contains(t.selfPid) { return "\(t.path) holds crsnap's own process (pid \(t.selfPid))" }
        if t.procs.contains(1) { return "\(t.path) holds pid 1, the init" }
        if let own = t.selfCgroup, contains(path, own) { return "crsnap's own cgroup \(own) is inside \(t.path)" }
        if let initCg = t.initCgroup, contains(path, initCg) { return "the init's cgroup \(initCg) is inside \(t.path)" }
        return nil
    }

    /// Why CRIU's network lock must not be applied to a tree in network
    /// namespace `treeNet`, or nil. The lock blocks every packet of the
    /// namespace it is applied in; one shared with crsnap is the host's.
    public static func networkLockRefusal(lock: Bool, treeNet: String?, selfNet: String?) -> String? {
        guard lock else { return nil }
        guard let treeNet, let selfNet else { return "the network namespace of the tree is unknown" }
        if treeNet == selfNet { return "the tree shares crsnap's network namespace (\(selfNet)): locking it would lock the host" }
        return nil
    }

    static func normalized(_ p: String) -> String {
        var s = p
        while s.count > 1 && s.hasSuffix("/") { s.removeLast() }
        return s
    }

    /// True when `inner` is `outer` or below it.
    static func contains(_ outer: String, _ inner: String) -> Bool {
        let o = normalized(outer), i = normalized(inner)
        return i == o || i.hasPrefix(o + "/")
    }
}

extension FreezerCgroup {
    /// The directory the container cgroups are made in: `<hierarchy>/crsnap`.
    var crsnapRoot: String { (path as NSString).deletingLastPathComponent }

    /// The cgroup (absolute path in this hierarchy) that process `pid`
    /// ("self" or a number) is in, from /proc/PID/cgroup; nil where unknown.
    func cgroupOf(_ pid: String) -> String? {
        guard let text = try? Sys.readText("/proc/\(pid)/cgroup") else { return nil }
        let hierarchy = (crsnapRoot as NSString).deletingLastPathComponent
        for line in text.split(separator: "\n") {
            // "ID:CONTROLLERS:PATH"; cgroup v2's line is "0::PATH"
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            let ours = version == 1 ? parts[1].split(separator: ",").contains("freezer") : parts[0] == "0" && parts[1].isEmpty
            if ours { return hierarchy + (parts[2] == "/" ? "" : String(parts[2])) }
        }
        return nil
    }

    /// Throws unless this cgroup may be frozen (see `Safety.freezeRefusal`).
    public func checkFreezable() throws {
        let target = Safety.FreezeTarget(path: path, crsnapRoot: crsnapRoot, procs: procs(), selfPid: getpid(),
                                         selfCgroup: cgroupOf("self"), initCgroup: cgroupOf("1"))
        if (crsnapRoot as NSString).lastPathComponent != "crsnap" {
            throw SystemError("refuse to freeze", "\(path) (not a container's cgroup in a crsnap/ directory)", errno: EPERM)
        }
        if let why = Safety.freezeRefusal(target) {
            throw SystemError("refuse to freeze", "\(path) (\(why))", errno: EPERM)
        }
    }
}
