import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What /proc says about processes.
public enum Proc {
    /// Waits until `pid` is gone (or a zombie), polling; false if it still
    /// lives after `timeout` seconds.
    public static func waitGone(_ pid: pid_t, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while isAlive(pid) {
            if Date() >= deadline { return false }
            usleep(10_000)
        }
        return true
    }

    public static func isAlive(_ pid: pid_t) -> Bool {
        guard pid > 0 else { return false }
        if kill(pid, 0) != 0 && errno == ESRCH { return false }
        // A zombie is dead for our purposes.
        guard let stat = try? Sys.readText("/proc/\(pid)/stat"),
              let close = stat.lastIndex(of: ")") else { return false }
        let rest = stat[stat.index(after: close)...].split(separator: " ")
        return rest.first.map { $0 != "Z" && $0 != "X" } ?? false
    }

    /// The pids of `pid` in each nested pid namespace, outermost first (NSpid).
    public static func nsPids(_ pid: pid_t) -> [pid_t] {
        guard let status = try? Sys.readText("/proc/\(pid)/status") else { return [] }
        for line in status.split(separator: "\n") where line.hasPrefix("NSpid:") {
            return line.dropFirst(6).split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { pid_t($0) }
        }
        return []
    }

    /// The "pipe:[inode]" name of an fd, as CRIU names it in inherit_fd keys.
    public static func fdTarget(pid: pid_t, fd: Int32) -> String? {
        fdTarget(path: "/proc/\(pid)/fd/\(fd)")
    }

    /// What a /proc magic link (fd/N, map_files/RANGE) points at.
    public static func fdTarget(path: String) -> String? {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 16)
        let n = readlink(path, &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static func capabilityEffective() -> UInt64? {
        guard let status = try? Sys.readText("/proc/self/status") else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
            return UInt64(line.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16)
        }
        return nil
    }
}
