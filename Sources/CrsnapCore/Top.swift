import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// One process of a container as the host sees it: `crsnap top`.
public struct TaskRow: Codable, Equatable, Sendable {
    /// Its pid on the host (what gdb -p, perf -p and strace -p take).
    public var host_pid: Int32
    /// Its pid inside the container's pid namespace (what `crsnap exec`
    /// tools see).
    public var pid: Int32
    /// Its parent's pid inside; nil for the container's init, whose parent
    /// (crsnap's monitor) is outside.
    public var ppid: Int32?
    public var threads: Int
    /// The state letter and word of /proc/PID/status ("S (sleeping)").
    public var state: String
    public var uid: UInt32
    public var rss_bytes: UInt64
    /// Its command line, or its name in brackets when it has none.
    public var command: String
    /// With threads asked for: every thread, the main one first.
    public var thread_list: [ThreadRow]?

    public struct ThreadRow: Codable, Equatable, Sendable {
        public var host_tid: Int32
        public var tid: Int32
        public var name: String
        public var state: String
    }
}

/// The tasks of a running container, read from /proc through its cgroup.
public enum Top {
    public static func tasks(store: Store, name: String, threads: Bool = false) throws -> [TaskRow] {
        let c = try Container(store: store, name: name)
        let initPid = try c.runningInit()
        let pids = try c.cgroup().procs()
        // The container's pid namespace is one level below its monitor's:
        // its init's NSpid ends with 1 there; a process that made a pid
        // namespace of its own below shows one more level.
        let level = Proc.nsPids(initPid).count - 1
        guard level >= 1 else {
            throw CrsnapError(.failed, "container \"\(name)\": its init (pid \(initPid)) shows no pid namespace of its own in /proc")
        }
        // Each task's status read once: its own row, and its pid inside for
        // its children's. A task that ends meanwhile is left out.
        var statuses: [pid_t: String] = [:]
        var inside: [pid_t: pid_t] = [:]
        for pid in pids {
            guard let status = Proc.status(pid) else { continue }
            let ns = Proc.nsPids(status: status)
            guard ns.count > level else { continue }
            statuses[pid] = status
            inside[pid] = ns[level]
        }
        var rows: [TaskRow] = []
        for (pid, status) in statuses {
            let hostParent = Proc.field("PPid", in: status).flatMap { pid_t($0) }
            var row = TaskRow(host_pid: pid, pid: inside[pid]!,
                              ppid: pid == initPid ? nil : hostParent.flatMap { inside[$0] },
                              threads: Proc.field("Threads", in: status).flatMap { Int($0) } ?? 1,
                              state: Proc.field("State", in: status).map(String.init) ?? "?",
                              uid: Proc.field("Uid", in: status)?.split(whereSeparator: { $0 == "\t" || $0 == " " }).first.flatMap { UInt32($0) } ?? 0,
                              rss_bytes: Proc.bytesField("VmRSS", in: status) ?? 0,
                              command: commandLine(pid, name: Proc.field("Name", in: status).map(String.init) ?? "?"))
            if threads {
                row.thread_list = threadRows(pid, level: level)
                row.threads = row.thread_list?.count ?? row.threads
            }
            rows.append(row)
        }
        return rows.sorted { $0.pid < $1.pid }
    }

    /// /proc/PID/cmdline as words; "[name]" for a task without one (a
    /// kernel-like or exiting task).
    static func commandLine(_ pid: pid_t, name: String) -> String {
        let raw = (try? Sys.readFile("/proc/\(pid)/cmdline")) ?? []
        let words = raw.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        let text = (words.last == "" ? Array(words.dropLast()) : words).joined(separator: " ")
        return text.isEmpty ? "[\(name)]" : text
    }

    static func threadRows(_ pid: pid_t, level: Int) -> [TaskRow.ThreadRow] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).compactMap { pid_t($0) }
        return names.sorted { ($0 == pid ? 0 : 1, $0) < ($1 == pid ? 0 : 1, $1) }.compactMap { tid in
            guard let status = try? Sys.readText("/proc/\(pid)/task/\(tid)/status") else { return nil }
            let ns = Proc.nsPids(status: status)
            guard ns.count > level else { return nil }
            return TaskRow.ThreadRow(host_tid: tid, tid: ns[level], name: Proc.field("Name", in: status).map(String.init) ?? "?",
                                     state: Proc.field("State", in: status).map(String.init) ?? "?")
        }
    }
}
