import CInject
import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A file lock as CRIU recorded it at a dump: filelocks.img, one
/// FileLockEntry an entry (1 flag, 2 type, 3 pid, 4 fd, 5 start, 6 len).
public struct FileLock: Equatable, Hashable, Codable, CustomStringConvertible {
    public enum Kind: String, Codable {
        case posix, ofd, flock, lease

        /// How /proc/PID/fdinfo names the kind.
        var procName: String {
            switch self {
            case .posix: return "POSIX"
            case .ofd: return "OFDLCK"
            case .flock: return "FLOCK"
            case .lease: return "LEASE"
            }
        }
    }

    public var kind: Kind
    public var write: Bool
    /// The holder's pid inside the container's pid namespace.
    public var pid: Int32
    /// The holder's descriptor of the file.
    public var fd: Int32
    public var start: Int64
    /// Bytes locked; 0 = from `start` to the end of the file and beyond.
    public var length: Int64

    public init(kind: Kind, write: Bool, pid: Int32, fd: Int32, start: Int64 = 0, length: Int64 = 0) {
        self.kind = kind
        self.write = write
        self.pid = pid
        self.fd = fd
        self.start = start
        self.length = length
    }

    /// The last byte, nil for "to the end of the file".
    public var end: Int64? { length == 0 ? nil : start + length - 1 }

    /// The same lock as the kernel's lock table would show it.
    var asHeld: HeldLock { HeldLock(kind: kind.procName, write: write, start: start, end: end) }

    public var description: String { FileLocks.describe(asHeld) }

    /// Whether `held` (a line of fdinfo) is this lock.
    public func isHeld(as held: HeldLock) -> Bool {
        held.kind == kind.procName && held.write == write
            && (kind == .flock || (held.start == start && held.end == end))
    }
}

/// A lock the kernel shows in /proc/PID/fdinfo/FD:
/// "lock:\t1: POSIX  ADVISORY  WRITE 71 00:30:260 100 109".
public struct HeldLock: Equatable {
    public var kind: String
    public var write: Bool
    public var start: Int64
    /// nil for EOF.
    public var end: Int64?
}

public enum FileLocks {
    public static let imageName = "filelocks.img"

    /// The locks CRIU recorded in a dump's images ([] when it recorded none).
    public static func recorded(imagesDir: String) throws -> [FileLock] {
        let path = "\(imagesDir)/\(imageName)"
        guard Sys.exists(path) else { return [] }
        let image = try CriuImageFile(path: path)
        var out: [FileLock] = []
        for k in image.entries.indices {
            let f = try image.fields(k)
            let b = image.bytes
            guard let flag = Wire.varintField(b, f, 1), let type = Wire.varintField(b, f, 2),
                  let pid = Wire.varintField(b, f, 3), let fd = Wire.varintField(b, f, 4),
                  let start = Wire.varintField(b, f, 5), let len = Wire.varintField(b, f, 6) else {
                throw CriuImageFile.Malformed(path: path, why: "entry \(k) lacks a required field")
            }
            // CRIU's FL_POSIX 1, FL_FLOCK 2, FL_OFD 4, FL_LEASE 8; type is F_RDLCK 0 / F_WRLCK 1.
            let kind: FileLock.Kind
            switch flag {
            case 1: kind = .posix
            case 2: kind = .flock
            case 4: kind = .ofd
            case 8: kind = .lease
            default: throw CriuImageFile.Malformed(path: path, why: "entry \(k) has an unknown lock kind \(flag)")
            }
            // int32 and int64 fields: negative values are ten-byte varints.
            out.append(FileLock(kind: kind, write: type & 3 == 1, pid: Int32(truncatingIfNeeded: Int64(bitPattern: pid)),
                                fd: Int32(truncatingIfNeeded: Int64(bitPattern: fd)),
                                start: Int64(bitPattern: start), length: Int64(bitPattern: len)))
        }
        return out
    }

    /// The locks a process holds through its descriptor `fd`, from
    /// /proc/PID/fdinfo/FD (the kernel lists there the POSIX locks of the
    /// process's file table and the flock/OFD locks of that open file).
    public static func held(pid: pid_t, fd: Int32) -> [HeldLock] {
        guard let text = try? Sys.readText("/proc/\(pid)/fdinfo/\(fd)") else { return [] }
        return parseFdinfo(text)
    }

    /// fdinfo's "lock:" lines are lines of /proc/locks behind a prefix.
    static func parseFdinfo(_ text: String) -> [HeldLock] {
        let lines = text.split(separator: "\n").filter { $0.hasPrefix("lock:") }.map { $0.dropFirst(5) }
        return parseProcLocks(lines.joined(separator: "\n")).map(\.lock)
    }
}

/// A line of /proc/locks: "1: POSIX  ADVISORY  WRITE 71 00:30:260 100 109",
/// or "1: -> POSIX ..." for a request waiting for the lock.
public struct ProcLock: Equatable {
    public var waiting: Bool
    public var lock: HeldLock
    /// The owner's pid as the reader sees it (-1 for OFD locks: no owner process).
    public var pid: pid_t
    /// "MAJOR:MINOR:INODE" of the locked file.
    public var file: String

    public var inode: String { String(file.split(separator: ":").last ?? "") }
}

/// A lock a container's process holds on a file that a process outside the
/// container also locks or waits for: the outside one is not part of any
/// snapshot, so what the two agreed on at the take instant is not either.
public struct SharedLock: Equatable, CustomStringConvertible {
    public var file: String
    /// Host pid of the container's process, and its lock.
    public var holder: pid_t
    public var lock: String
    /// Host pids (and names) of the processes outside.
    public var outside: [String]

    public var description: String {
        "\(file): the container's \(lock) (host pid \(holder)) is on a file that \(outside.joined(separator: ", ")) "
            + "outside the container also \(outside.count == 1 ? "locks" : "lock"); the outside side is not part of the snapshot"
    }
}

extension FileLocks {
    static func parseProcLocks(_ text: String) -> [ProcLock] {
        var out: [ProcLock] = []
        for line in text.split(separator: "\n") {
            var w = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst()
            let waiting = w.first == "->"
            if waiting { w = w.dropFirst() }
            let f = Array(w)
            guard f.count >= 7, let pid = pid_t(f[3]), let start = Int64(f[5]) else { continue }
            out.append(ProcLock(waiting: waiting, lock: HeldLock(kind: String(f[0]), write: f[2] == "WRITE", start: start,
                                                                  end: f[6] == "EOF" ? nil : Int64(f[6])),
                                pid: pid, file: String(f[4])))
        }
        return out
    }

    /// The locks of `tasks` (host pids) on files that processes outside them
    /// lock too or wait for, from the kernel's lock table. `name(pid, inode)`
    /// gives the path under which a task has the file open. OFD locks name
    /// no owner (pid -1) and are left out on the outside side.
    public static func shared(by tasks: Set<pid_t>, procLocks: String = (try? Sys.readText("/proc/locks")) ?? "",
                              name: (pid_t, String) -> String? = FileLocks.openPath,
                              process: (pid_t) -> String = Proc.comm) -> [SharedLock] {
        matching(procLocks, name: name, process: process, mine: { !$0.waiting && tasks.contains($0.pid) },
                 other: { mine, o in o.file == mine.file && o.pid > 0 && !tasks.contains(o.pid) })
    }

    /// Lock requests of `tasks` that wait ("->" in /proc/locks) for a lock
    /// a process outside them holds, each with the holders. During a CRIU
    /// restore no restored process runs code of its own, so a waiting
    /// request of the restored tree is CRIU's own blocking F_SETLKW or
    /// flock, held up by the outside.
    public static func waitingOnOutside(_ tasks: Set<pid_t>, procLocks: String = (try? Sys.readText("/proc/locks")) ?? "",
                                        name: (pid_t, String) -> String? = FileLocks.openPath,
                                        process: (pid_t) -> String = Proc.comm) -> [SharedLock] {
        matching(procLocks, name: name, process: process, mine: { $0.waiting && tasks.contains($0.pid) },
                 other: { mine, o in !o.waiting && o.file == mine.file && !tasks.contains(o.pid) })
    }

    /// Each line `mine` accepts, with the lines `other` pairs with it (those without any are left out).
    static func matching(_ procLocks: String, name: (pid_t, String) -> String?, process: (pid_t) -> String,
                         mine: (ProcLock) -> Bool, other: (ProcLock, ProcLock) -> Bool) -> [SharedLock] {
        let lines = parseProcLocks(procLocks)
        var out: [SharedLock] = []
        for m in lines where mine(m) {
            let others = lines.filter { other(m, $0) }
            guard !others.isEmpty else { continue }
            out.append(sharedLock(m, with: others, name: name, process: process))
        }
        return out
    }

    static func sharedLock(_ mine: ProcLock, with others: [ProcLock], name: (pid_t, String) -> String?,
                           process: (pid_t) -> String) -> SharedLock {
        var seen: [pid_t] = []
        for o in others where !seen.contains(o.pid) { seen.append(o.pid) }
        return SharedLock(file: name(mine.pid, mine.inode) ?? "inode \(mine.file)", holder: mine.pid, lock: describe(mine.lock),
                          outside: seen.map { $0 > 0 ? "pid \($0) (\(process($0)))" : "an OFD lock (no owning process)" })
    }

    /// "POSIX write lock on bytes 0-9", "flock write lock on the whole file":
    /// what every message says of a lock, recorded or seen in the lock table.
    static func describe(_ l: HeldLock) -> String {
        let kind = ["FLOCK": "flock", "OFDLCK": "OFD", "LEASE": "lease"][l.kind] ?? "POSIX"
        let whole = l.kind == "FLOCK" || l.kind == "LEASE"
        let range = whole ? "the whole file" : "bytes \(l.start)-\(l.end.map(String.init) ?? "EOF")"
        return "\(kind) \(l.write ? "write" : "read") lock on \(range)"
    }

    /// The path of the first descriptor of `pid` on the file with inode number `inode`.
    public static func openPath(_ pid: pid_t, _ inode: String) -> String? {
        for fd in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? [] {
            var st = stat()
            guard stat("/proc/\(pid)/fd/\(fd)", &st) == 0, "\(st.st_ino)" == inode else { continue }
            return Proc.fdTarget(path: "/proc/\(pid)/fd/\(fd)")
        }
        return nil
    }
}

/// Brings back file locks a CRIU restore lost, while the restored tree is
/// still stopped (restored with leave-stopped): CRIU 4.2 sets the POSIX locks
/// of a task before it opens the files of its shared mappings, and its
/// restorer closes those extra descriptors inside the task after mapping —
/// which drops every POSIX lock the process holds on that file. Only the
/// process itself can hold such a lock again (its owner is the process's file
/// table), so each missing lock is taken again from inside the process
/// (`crsnap_take_locks_in_task`: ptrace, one F_SETLK in the task). Then every
/// lock of the dump is checked once more; one that is still missing fails the
/// repair, naming the process, the file and the range.
public struct LockRepair {
    public struct Failure: Error, CustomStringConvertible {
        public let problems: [String]
        public var description: String {
            "file locks held at the snapshot could not be restored:\n  " + problems.joined(separator: "\n  ")
        }
    }

    public struct Report: Equatable {
        /// Locks of the dump checked in the restored tree.
        public var checked = 0
        /// Locks that were missing and were taken again.
        public var repaired: [FileLock] = []
        public var milliseconds = 0.0

        public init() {}
    }

    /// The locks a process holds through a descriptor.
    public var held: (pid_t, Int32) -> [HeldLock] = FileLocks.held
    /// Takes locks inside a stopped process; the errno of each (0 = taken).
    public var take: (pid_t, [FileLock]) throws -> [Int32] = LockRepair.takeInside
    /// What a person reading an error should call a process and a file.
    public var describe: (pid_t, Int32, Int32) -> (process: String, file: String) = LockRepair.names

    public init() {}

    /// `recorded`: the dump's locks; `tasks`: the restored tree, the host pid
    /// of each process by its pid in the container.
    public func run(recorded: [FileLock], tasks: [Int32: pid_t]) throws -> Report {
        let started = Date()
        var report = Report()
        var problems: [String] = []
        var missing: [pid_t: [FileLock]] = [:]
        // One read of fdinfo per descriptor and pass, however many locks it holds.
        var seen: [String: [HeldLock]] = [:]
        func holds(_ host: pid_t, _ lock: FileLock) -> Bool {
            let key = "\(host)/\(lock.fd)"
            let h = seen[key] ?? held(host, lock.fd)
            seen[key] = h
            return h.contains(where: lock.isHeld)
        }
        // Leases are CRIU's own business (it re-breaks them); they are not checked.
        let locks = recorded.filter { $0.kind != .lease }
        for lock in locks {
            guard let host = tasks[lock.pid] else {
                problems.append("process \(lock.pid) held a \(lock) (fd \(lock.fd)) but is not among the restored processes")
                continue
            }
            report.checked += 1
            if !holds(host, lock) { missing[host, default: []].append(lock) }
        }
        var failures: [FileLock: String] = [:]
        for (host, wanted) in missing.sorted(by: { $0.key < $1.key }) {
            do {
                let errs = try take(host, wanted)
                for (lock, e) in zip(wanted, errs) where e != 0 { failures[lock] = "the process's own \(lock.kind == .flock ? "flock" : "fcntl") said: \(String(cString: strerror(e)))" }
            } catch {
                for lock in wanted { failures[lock] = "\(error)" }
            }
        }
        seen = [:]
        for (host, wanted) in missing.sorted(by: { $0.key < $1.key }) {
            for lock in wanted {
                if holds(host, lock) {
                    report.repaired.append(lock)
                    continue
                }
                let n = describe(host, lock.pid, lock.fd)
                problems.append("\(n.process) lost its \(lock) of \(n.file) (fd \(lock.fd))"
                                + (failures[lock].map { ": \($0)" } ?? ""))
            }
        }
        report.milliseconds = Date().timeIntervalSince(started) * 1000
        if !problems.isEmpty { throw Failure(problems: problems) }
        return report
    }

    /// "process 7 (python3; host pid 4242)" and the file's path as the kernel names it.
    static func names(host: pid_t, pid: Int32, fd: Int32) -> (process: String, file: String) {
        ("process \(pid) (\(Proc.comm(host)); host pid \(host))", Proc.fdTarget(pid: host, fd: fd) ?? "fd \(fd)")
    }

    /// The real thing: waits until the process is stopped, then runs one
    /// lock call per lock inside it.
    public static func takeInside(_ host: pid_t, _ locks: [FileLock]) throws -> [Int32] {
        try Proc.waitStopped(host, timeout: 5)
        var requests = locks.map { l in
            crsnap_lock_request(kind: Int32(l.kind == .posix ? CRSNAP_LOCK_POSIX.rawValue : l.kind == .ofd ? CRSNAP_LOCK_OFD.rawValue : CRSNAP_LOCK_FLOCK.rawValue),
                                fd: l.fd, write: l.write ? 1 : 0, start: l.start, len: l.length, error: 0)
        }
        var what: UnsafePointer<CChar>?
        let r = crsnap_take_locks_in_task(host, &requests, Int32(requests.count), &what)
        if r < 0 {
            throw SystemError("take file locks inside the process (\(what.map { String(cString: $0) } ?? "?"))", "pid \(host)", errno: -r)
        }
        return requests.map { $0.error }
    }
}
