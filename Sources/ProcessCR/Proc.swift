import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What /proc says about processes.
public enum Proc {
    public static func isAlive(_ pid: pid_t) -> Bool {
        guard pid > 0 else { return false }
        if kill(pid, 0) != 0 && errno == ESRCH { return false }
        // A zombie is dead for our purposes.
        guard let s = state(pid) else { return false }
        return s != "Z" && s != "X"
    }

    /// The state letter of /proc/PID/stat ("R", "S", "T" stopped, "t" traced,
    /// "Z", ...), nil when there is no such process.
    public static func state(_ pid: pid_t) -> Character? {
        statFields(pid)?.first?.first
    }

    /// The fields of /proc/PID/stat from the third (state) on: everything
    /// after the command name, which may itself hold spaces and parentheses.
    static func statFields(_ pid: pid_t) -> [Substring]? {
        guard pid > 0, let stat = try? Sys.readText("/proc/\(pid)/stat"),
              let close = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(after: close)...].split(separator: " ")
    }

    /// The command name (/proc/PID/comm), "?" when unknown.
    public static func comm(_ pid: pid_t) -> String {
        (try? Sys.readText("/proc/\(pid)/comm"))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
    }

    /// Where the task sleeps in the kernel (/proc/PID/wchan), nil when unknown.
    public static func wchan(_ pid: pid_t) -> String? {
        guard let w = try? Sys.readText("/proc/\(pid)/wchan"), !w.isEmpty, w != "0" else { return nil }
        return w
    }

    /// True when the task sits in the freezer (v1 or v2) or in a stop.
    public static func isFrozen(_ pid: pid_t) -> Bool {
        if let s = state(pid), s == "T" || s == "t" { return true }
        guard let w = wchan(pid) else { return false }
        return w == "__refrigerator" || w == "do_freezer_trap"
    }

    /// Waits until `pid` is in a group stop (SIGSTOP and the like).
    public static func waitStopped(_ pid: pid_t, timeout: Double) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            guard let s = state(pid), s != "Z", s != "X" else {
                throw SystemError("wait for the process to stop", "pid \(pid)", errno: ESRCH)
            }
            if s == "T" { return }
            if Date() > deadline { throw SystemError("wait for the process to stop (state \(s))", "pid \(pid)", errno: ETIMEDOUT) }
            usleep(1000)
        }
    }

    /// The value of `key` in a /proc file of "Key:   value" lines
    /// (/proc/PID/status, /proc/meminfo), without the blanks before it.
    public static func field(_ key: String, in text: String) -> Substring? {
        for line in text.split(separator: "\n") where line.hasPrefix(key) && line.dropFirst(key.count).first == ":" {
            return line.dropFirst(key.count + 1).drop(while: { $0 == " " || $0 == "\t" })
        }
        return nil
    }

    /// A "N kB" value of such a file, in bytes.
    public static func bytesField(_ key: String, in text: String) -> UInt64? {
        field(key, in: text)?.split(separator: " ").first.flatMap { UInt64($0) }.map { $0 * 1024 }
    }

    /// /proc/PID/status, nil when there is no such process.
    public static func status(_ pid: pid_t) -> String? {
        try? Sys.readText("/proc/\(pid)/status")
    }

    /// The pids of `pid` in each nested pid namespace, outermost first (NSpid).
    public static func nsPids(_ pid: pid_t) -> [pid_t] {
        status(pid).map { nsPids(status: $0) } ?? []
    }

    /// The NSpid line of a status text (a process's or a thread's).
    public static func nsPids(status: String) -> [pid_t] {
        (field("NSpid", in: status) ?? "").split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { pid_t($0) }
    }

    /// The offsets of `pid`'s time namespace against the host's clocks, in
    /// seconds (/proc/PID/timens_offsets: "monotonic SEC NSEC", a normalized
    /// timespec, so -4 777538042 is -3.222 s); nil without one to read.
    public static func timeNamespaceOffsets(_ pid: pid_t) -> (monotonic: Double, boottime: Double)? {
        guard let text = try? Sys.readText("/proc/\(pid)/timens_offsets") else { return nil }
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count == 3, let sec = Int64(f[1]), let nsec = Int64(f[2]) else { continue }
            values[String(f[0])] = Double(sec) + Double(nsec) / 1e9
        }
        guard let m = values["monotonic"], let b = values["boottime"] else { return nil }
        return (m, b)
    }

    /// The "pipe:[inode]" name of an fd, as CRIU names it in inherit_fd keys.
    public static func fdTarget(pid: pid_t, fd: Int32) -> String? {
        fdTarget(path: "/proc/\(pid)/fd/\(fd)")
    }

    /// What a /proc magic link (fd/N, map_files/RANGE) points at.
    public static func fdTarget(path: String) -> String? { try? Sys.readLink(path) }

    public static func capabilityEffective() -> UInt64? {
        guard let status = try? Sys.readText("/proc/self/status"), let v = field("CapEff", in: status) else { return nil }
        return UInt64(v.trimmingCharacters(in: .whitespaces), radix: 16)
    }

    /// CAP_SYS_RESOURCE: CRIU needs it to dump a task of another user.
    public static let capSysResource = 24

    /// Whether this process has capability `cap` in effect; nil when
    /// /proc/self/status cannot be read.
    public static func hasCapability(_ cap: Int) -> Bool? {
        capabilityEffective().map { ($0 >> UInt64(cap)) & 1 == 1 }
    }
}

/// Who a process is, not just its number: a pid is reused once its process
/// is gone — after a reboot, or once the pid namespace that held it has
/// ended, the same number belongs to another process (seen: a container that
/// vanished with an isolated run listed as running with pid 18, a kernel
/// thread). Recorded with its start time (ticks since boot, /proc/PID/stat
/// field 22), the machine's boot id and the pid namespace the number is in.
public struct ProcessIdentity: Codable, Equatable, Sendable {
    public var pid: pid_t
    public var start: UInt64?
    public var boot: String?
    public var pidNamespace: String?

    public init(pid: pid_t, start: UInt64?, boot: String?, pidNamespace: String?) {
        self.pid = pid
        self.start = start
        self.boot = boot
        self.pidNamespace = pidNamespace
    }

    /// The identity of live process `pid` as this process sees it now.
    public static func of(_ pid: pid_t) -> ProcessIdentity {
        ProcessIdentity(pid: pid, start: Proc.startTime(pid), boot: Proc.bootID(), pidNamespace: Proc.pidNamespace())
    }

    /// Why the recorded process is no longer the one running under `pid`, or
    /// nil when it is. `now` is what this process sees (injectable for tests).
    public func goneReason(now: Observed = .current) -> String? {
        if let boot, let nowBoot = now.boot, boot != nowBoot {
            return "the machine has restarted since (boot id \(boot.prefix(8))… is now \(nowBoot.prefix(8))…)"
        }
        if let ns = pidNamespace, let nowNs = now.pidNamespace, ns != nowNs {
            return "pid \(pid) was recorded in another pid namespace (\(ns)), not this one (\(nowNs))"
        }
        guard pid > 0, let started = now.startTime(pid) else { return "pid \(pid) has exited" }
        if let start, start != started { return "pid \(pid) now belongs to another process" }
        return nil
    }

    public var isAlive: Bool { goneReason() == nil }

    /// What the checks compare against.
    public struct Observed {
        public var boot: String?
        public var pidNamespace: String?
        /// The start time of a live (not zombie) pid, nil when there is none.
        public var startTime: (pid_t) -> UInt64?

        public init(boot: String?, pidNamespace: String?, startTime: @escaping (pid_t) -> UInt64?) {
            self.boot = boot
            self.pidNamespace = pidNamespace
            self.startTime = startTime
        }

        public static var current: Observed {
            Observed(boot: Proc.bootID(), pidNamespace: Proc.pidNamespace()) { Proc.isAlive($0) ? Proc.startTime($0) : nil }
        }
    }
}

extension Proc {
    /// Field 22 of /proc/PID/stat: when the process started, in clock ticks after boot.
    public static func startTime(_ pid: pid_t) -> UInt64? {
        guard let rest = statFields(pid), rest.count > 19 else { return nil }
        return UInt64(rest[19])
    }

    /// This boot of the machine (/proc/sys/kernel/random/boot_id).
    public static func bootID() -> String? {
        (try? Sys.readText("/proc/sys/kernel/random/boot_id"))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The pid namespace this process is in, "pid:[INODE]".
    public static func pidNamespace() -> String? {
        fdTarget(path: "/proc/self/ns/pid")
    }
}

extension ProcessIdentity {
    /// Waits until the recorded process is gone; false if it still runs after `timeout` seconds.
    public func waitGone(timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while isAlive {
            if Date() >= deadline { return false }
            usleep(10_000)
        }
        return true
    }
}
