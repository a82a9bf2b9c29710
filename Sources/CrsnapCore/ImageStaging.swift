import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// Where CRIU writes a take's images while the container is frozen. Most of
/// a large container's pause is CRIU copying its memory into the images;
/// into the store's btrfs that ran at about 1 GB/s here, into a tmpfs at
/// about 2 GB/s (Scripts/bench-pause, docs/design.md "The pause"). So when
/// the machine has the memory to spare, the staging `images` directory is a
/// tmpfs of its own (with a size limit) and the images are copied into the
/// store after the thaw, outside the pause. The journal names the staging
/// directory, so a crash in between is cleaned up like any interrupted take
/// (the tmpfs is unmounted, its memory freed).
public enum ImageStaging {
    public enum Mode: String, CaseIterable, Codable, Sendable {
        /// Memory when there is enough to spare, else the store.
        case auto
        /// Always memory (fails the take when there is not enough).
        case memory
        /// Always the store.
        case store
    }

    /// The memory a staging tmpfs may take: what CRIU will write for the
    /// tasks' anonymous and shared memory and their tmpfs mounts, with room
    /// for the other images.
    public struct Plan: Equatable, Sendable {
        /// Expected bytes of the images.
        public var expected: UInt64
        /// The tmpfs's size limit (above `expected`: a limit, not a reservation).
        public var limit: UInt64
    }

    static let headroom: UInt64 = 64 << 20

    /// Bytes CRIU is expected to write for `tasks` (host pids, one per
    /// process): resident anonymous and shared-memory pages of each distinct
    /// address space, plus `tmpfsBytes`, plus headroom.
    public static func plan(tasks: [pid_t], tmpfsBytes: UInt64,
                            memory: (pid_t) -> UInt64? = ImageStaging.dumpedMemory) -> Plan {
        var total = headroom + tmpfsBytes
        for pid in tasks { total += memory(pid) ?? 0 }
        let limit = total + total / 2 + headroom
        return Plan(expected: total, limit: (limit + (1 << 20) - 1) / (1 << 20) * (1 << 20))
    }

    /// RssAnon + RssShmem of `pid` in bytes (/proc/PID/status).
    public static func dumpedMemory(_ pid: pid_t) -> UInt64? {
        guard let status = Proc.status(pid) else { return nil }
        return (Proc.bytesField("RssAnon", in: status) ?? 0) + (Proc.bytesField("RssShmem", in: status) ?? 0)
    }

    /// Why memory cannot hold `plan` now, or nil: the machine must keep
    /// `floor` bytes available beside the images.
    public static func refusal(_ plan: Plan, available: UInt64?, floor: UInt64) -> String? {
        guard let available else { return "MemAvailable is unknown" }
        if available < plan.expected + floor {
            return "the images need about \(formatMiB(plan.expected)) and \(formatMiB(available)) of memory are available, of which \(formatMiB(floor)) must stay free"
        }
        return nil
    }

    /// Memory kept free beside a staging tmpfs: 1 GiB or a tenth of RAM, the larger.
    public static func floor(total: UInt64) -> UInt64 { max(1 << 30, total / 10) }

    /// MemAvailable and MemTotal in bytes.
    public static func meminfo() -> (available: UInt64?, total: UInt64) {
        let text = (try? Sys.readText("/proc/meminfo")) ?? ""
        return (Proc.bytesField("MemAvailable", in: text), Proc.bytesField("MemTotal", in: text) ?? 0)
    }

    /// Mounts a tmpfs limited to `limit` bytes on the (empty) directory `dir`.
    public static func mount(at dir: String, limit: UInt64) throws {
        try Mounts.mount(source: "crsnap-images", target: dir, type: "tmpfs",
                         options: "size=\(limit),mode=0700,nosuid,nodev,noexec")
    }

    /// Unmounts a staging tmpfs if `dir` is one (lazily if it is busy).
    public static func unmountIfMounted(_ dir: String) throws {
        if Mounts.isMountPoint(dir) { try Mounts.unmountOrDetach(dir) }
    }

    /// Copies every file of the tmpfs `from` into the new directory `to`
    /// (same names and modes), then unmounts `from` and puts `to`
    /// in its place. Returns the bytes copied.
    @discardableResult
    public static func moveToStore(_ from: String, _ to: String) throws -> UInt64 {
        try Sys.mkdir(to, mode: 0o700)
        var copied: UInt64 = 0
        for name in try FileManager.default.contentsOfDirectory(atPath: from).sorted() {
            let src = try Sys.open("\(from)/\(name)", O_RDONLY)
            defer { Sys.close(src) }
            var st = Glibc.stat()
            try Sys.check("fstat", "\(from)/\(name)") { fstat(src, &st) }
            guard (st.st_mode & S_IFMT) == S_IFREG else { continue }
            let dst = try Sys.open("\(to)/\(name)", O_WRONLY | O_CREAT | O_EXCL, mode: st.st_mode & 0o7777)
            defer { Sys.close(dst) }
            copied += try FileClone.copy(to: dst, from: src, "\(to)/\(name)")
        }
        try unmountIfMounted(from)
        try Sys.rmdir(from)
        try Sys.rename(to, from)
        return copied
    }

    static func formatMiB(_ b: UInt64) -> String { "\(b >> 20) MiB" }
}
