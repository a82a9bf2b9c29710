import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A regular file a task holds open (as an fd or a mapping) whose last name
/// is gone: nlink 0, unlinked after opening or made with O_TMPFILE.
public struct UnlinkedOpenFile {
    /// CRIU's external id for it, "file[MNT_ID:INODE]" in hex; a dump given it
    /// in `external` records a reference instead of copying the data.
    public var key: String
    /// The path it had, as /proc shows it without " (deleted)".
    public var path: String
    public var size: UInt64
    public var mode: mode_t
    public var uid: uid_t
    public var gid: gid_t
    /// crsnap's own read-only descriptor for the file (close with `close()`).
    public var fd: Int32
    /// Held as an fd and/or mapped.
    public var held: Bool
    public var mapped: Bool
}

/// What the tasks of a tree hold open.
public enum OpenFiles {
    static let tmpfsMagic: UInt = 0x0102_1994

    /// The unlinked regular files `pids` hold as fds or mappings, one entry
    /// per file (by mount and inode), on filesystems `accept` (statfs magic)
    /// takes. Files on tmpfs/shmem (memfd, SysV and /dev/zero mappings,
    /// --tmpfs mounts) are CRIU's to handle and never returned. Files that
    /// vanish or cannot be opened while scanning are skipped.
    public static func unlinked(pids: [pid_t], accept: (UInt) -> Bool) -> [UnlinkedOpenFile] {
        var out: [UnlinkedOpenFile] = []
        var seen: [String: Int] = [:]
        for pid in pids {
            for (dir, isMap) in [("/proc/\(pid)/fd", false), ("/proc/\(pid)/map_files", true)] {
                for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
                    let link = "\(dir)/\(name)"
                    var st = Glibc.stat()
                    guard stat(link, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_nlink == 0 else { continue }
                    let fd = open(link, O_RDONLY | O_CLOEXEC)
                    guard fd >= 0 else { continue }
                    guard fstat(fd, &st) == 0, st.st_nlink == 0,
                          let magic = Sys.filesystemType(fd: fd), magic != tmpfsMagic, accept(magic),
                          let mnt = mountID(fd) else {
                        Glibc.close(fd)
                        continue
                    }
                    let key = "file[\(String(mnt, radix: 16)):\(String(UInt64(st.st_ino), radix: 16))]"
                    if let i = seen[key] {
                        Glibc.close(fd)
                        if isMap { out[i].mapped = true } else { out[i].held = true }
                        continue
                    }
                    var path = Proc.fdTarget(path: link) ?? ""
                    if path.hasSuffix(" (deleted)") { path.removeLast(10) }
                    seen[key] = out.count
                    out.append(UnlinkedOpenFile(key: key, path: path, size: UInt64(st.st_size), mode: st.st_mode & 0o7777,
                                                uid: st.st_uid, gid: st.st_gid, fd: fd, held: !isMap, mapped: isMap))
                }
            }
        }
        return out
    }

    /// The device of the kernel's internal shmem mount, which backs shared
    /// anonymous memory (/proc shows "/dev/zero (deleted)") and SysV shared
    /// memory ("/SYSV... (deleted)"): CRIU dumps those with the tasks' memory
    /// and IPC namespace, not as files. Found the way CRIU finds it: map a
    /// shared anonymous page and stat its map_files entry.
    public static let sharedMemoryDevice: UInt64? = {
        let size = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard let p = mmap(nil, size, PROT_READ, MAP_SHARED | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else { return nil }
        defer { munmap(p, size) }
        let start = UInt(bitPattern: p)
        var st = Glibc.stat()
        let link = "/proc/self/map_files/\(String(start, radix: 16))-\(String(start + UInt(size), radix: 16))"
        return stat(link, &st) == 0 ? UInt64(st.st_dev) : nil
    }()

    /// The mount id of an open file, as /proc/self/fdinfo tells it (CRIU
    /// reads the same field for the same open file).
    public static func mountID(_ fd: Int32) -> Int? {
        mountID(fdinfo: "/proc/self/fdinfo/\(fd)")
    }

    /// The mnt_id of an fdinfo file (/proc/PID/fdinfo/N).
    static func mountID(fdinfo path: String) -> Int? {
        guard let text = try? Sys.readText(path) else { return nil }
        return Proc.field("mnt_id", in: text).flatMap { Int($0) }
    }

    public static func close(_ files: [UnlinkedOpenFile]) {
        for f in files { Sys.close(f.fd) }
    }
}
