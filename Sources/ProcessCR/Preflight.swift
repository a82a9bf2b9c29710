import CLibmount
import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One thing that would stop a checkpoint of a process tree (a blocker: CRIU
/// would fail on it after the freeze) or make it weaker than it looks (a
/// warning), named with the process, the fd and the path.
public struct PreflightFinding: Codable, Equatable, Sendable {
    public enum Severity: String, Codable, Sendable { case blocker, warning }
    public var severity: Severity
    /// "uid", "mount", "file-type", "unix-peer", "ghost-limit", "tcp-peer".
    public var kind: String
    public var pid: Int32
    public var process: String
    public var fd: Int32?
    public var path: String?
    public var detail: String

    /// "pid 53 (python3) fd 4 /usr/lib/os-release: DETAIL".
    public var description: String {
        "pid \(pid) (\(process))" + (fd.map { " fd \($0)" } ?? "") + (path.map { " \($0)" } ?? "") + ": \(detail)"
    }
}

/// What a dump would meet, read from /proc before anything is frozen: the
/// observation (`observe`) and the judgment (`judge`, a pure function the
/// unit tests drive) are apart. Each blocker below is a failure CRIU 4.2
/// reports on this machine, found by trying it:
///
/// - a task of another user while crsnap lacks CAP_SYS_RESOURCE ("Can't get
///   rlimit 0: Operation not permitted");
/// - an open file on a mount that is not in the task's mount namespace, e.g.
///   an fd passed in over a unix socket ("Can't lookup mount=47 for fd=4");
/// - a kind of file CRIU does not dump ("Can't dump file 3 of that type
///   [600] (anon anon_inode:[userfaultfd])");
/// - one end of a unix stream connection whose other end is outside the tree
///   ("Can't dump half of stream unix connection"), or an unnamed external
///   datagram peer;
/// - an unlinked file on a tmpfs larger than the ghost limit (CRIU copies
///   such files into the images and refuses larger ones).
public enum Preflight {
    /// Anonymous-inode files CRIU 4.2 dumps (criu/*.c: is_anon_link_type).
    public static let dumpableAnonymous: Set<String> = [
        "[eventfd]", "[eventpoll]", "[signalfd]", "[timerfd]", "inotify", "[fanotify]", "[pidfd]", "bpf-map",
    ]

    public struct OpenFile: Equatable {
        public var fd: Int32?
        /// readlink of /proc/PID/fd/N or /proc/PID/map_files/RANGE.
        public var link: String
        public var mountID: Int?
        /// Bytes allocated to it (st_blocks * 512): what CRIU holds against
        /// the ghost limit.
        public var allocated: UInt64
        /// On the kernel's internal shmem mount (shared anonymous or SysV
        /// shared memory): CRIU dumps it with the memory, not as a file.
        public var sharedMemory: Bool
        public init(fd: Int32?, link: String, mountID: Int?, allocated: UInt64, sharedMemory: Bool = false) {
            self.fd = fd
            self.link = link
            self.mountID = mountID
            self.allocated = allocated
            self.sharedMemory = sharedMemory
        }
    }

    public struct Task: Equatable {
        public var pid: pid_t
        public var comm: String
        /// Real, effective, saved and filesystem ids (/proc/PID/status).
        public var uids: [UInt32]
        public var gids: [UInt32]
        /// Its mount namespace's mounts: id -> filesystem type.
        public var mounts: [Int: String]
        public var files: [OpenFile]
        public init(pid: pid_t, comm: String, uids: [UInt32], gids: [UInt32], mounts: [Int: String], files: [OpenFile]) {
            self.pid = pid
            self.comm = comm
            self.uids = uids
            self.gids = gids
            self.mounts = mounts
            self.files = files
        }
    }

    public struct UnixSocket: Equatable {
        public var ino: UInt32
        public var peer: UInt32
        public var type: Int32
        public var name: String
        public init(ino: UInt32, peer: UInt32, type: Int32, name: String) {
            self.ino = ino
            self.peer = peer
            self.type = type
            self.name = name
        }
    }

    /// An established TCP connection of the task's network namespace.
    public struct TCPConnection: Equatable {
        public var ino: UInt32
        public var local: String
        public var remote: String
        public init(ino: UInt32, local: String, remote: String) {
            self.ino = ino
            self.local = local
            self.remote = remote
        }
    }

    public struct Limits {
        public var ghostLimit: UInt64
        /// crsnap's effective capabilities hold CAP_SYS_RESOURCE.
        public var canDumpOtherUsers: Bool
        public init(ghostLimit: UInt64, canDumpOtherUsers: Bool) {
            self.ghostLimit = ghostLimit
            self.canDumpOtherUsers = canDumpOtherUsers
        }
    }

    static let tmpfsTypes: Set<String> = ["tmpfs", "shmem", "devtmpfs"]

    /// The findings for `tasks`, blockers first.
    public static func judge(tasks: [Task], unix: [UnixSocket], tcp: [TCPConnection], limits: Limits) -> [PreflightFinding] {
        var out: [PreflightFinding] = []
        var socketsOfTree: [UInt32: (Task, Int32)] = [:]
        for t in tasks {
            for f in t.files {
                if let ino = socketInode(f.link), let fd = f.fd, socketsOfTree[ino] == nil { socketsOfTree[ino] = (t, fd) }
            }
        }
        for t in tasks {
            func add(_ s: PreflightFinding.Severity, _ kind: String, _ fd: Int32?, _ path: String?, _ detail: String) {
                out.append(PreflightFinding(severity: s, kind: kind, pid: t.pid, process: t.comm, fd: fd, path: path, detail: detail))
            }
            let ids = Set(t.uids + t.gids)
            if !limits.canDumpOtherUsers, ids != [0], let uid = t.uids.first(where: { $0 != 0 }) ?? t.uids.first {
                let gid = t.gids.first(where: { $0 != 0 }) ?? t.gids.first ?? 0
                add(.blocker, "uid", nil, nil, "runs as uid \(uid) gid \(gid): CRIU dumps a task of another user only with CAP_SYS_RESOURCE, which crsnap's process lacks here; run it as root or give crsnap that capability")
            }
            for f in t.files {
                let what = f.fd == nil ? "mapping" : "file"
                if f.link.hasPrefix("anon_inode:") {
                    let kind = String(f.link.dropFirst("anon_inode:".count))
                    if !dumpableAnonymous.contains(kind) {
                        add(.blocker, "file-type", f.fd, f.link, "CRIU cannot dump this kind of file (\(kind))")
                    }
                    continue
                }
                guard f.link.hasPrefix("/"), !f.link.hasPrefix("/memfd:"), !f.sharedMemory else { continue }
                guard let m = f.mountID, let fstype = t.mounts[m] else {
                    add(.blocker, "mount", f.fd, f.link, "the open \(what) is on a mount the container does not have (mount id \(f.mountID.map(String.init) ?? "?")), e.g. passed in from outside over a unix socket: CRIU cannot reach it")
                    continue
                }
                if f.link.hasSuffix(" (deleted)"), tmpfsTypes.contains(fstype), f.allocated > limits.ghostLimit {
                    add(.blocker, "ghost-limit", f.fd, f.link, "an unlinked \(what) with \(f.allocated) bytes allocated on \(fstype): CRIU copies such files into the images only up to \(limits.ghostLimit) bytes")
                }
            }
        }
        let byIno = Dictionary(unix.map { ($0.ino, $0) }, uniquingKeysWith: { a, _ in a })
        for s in unix.sorted(by: { $0.ino < $1.ino }) {
            guard let (t, fd) = socketsOfTree[s.ino], s.peer != 0, socketsOfTree[s.peer] == nil else { continue }
            let peerName = byIno[s.peer]?.name ?? ""
            let detail: String
            if s.type == SOCK_DGRAM_VALUE {
                // CRIU reconnects a datagram socket to its peer's name.
                guard peerName.isEmpty else { continue }
                detail = "a unix datagram socket connected to an unnamed socket outside the container: CRIU cannot reconnect an unnamed peer"
            } else {
                let named = peerName.isEmpty ? "an unnamed socket" : peerName
                detail = "one end of a unix \(s.type == SOCK_SEQPACKET_VALUE ? "seqpacket" : "stream") connection whose other end (\(named)) is outside the container: CRIU cannot dump half of a connection"
            }
            out.append(PreflightFinding(severity: .blocker, kind: "unix-peer", pid: t.pid, process: t.comm, fd: fd,
                                        path: s.name.isEmpty ? "socket:[\(s.ino)]" : s.name, detail: detail))
        }
        let treeLocal = Set(tcp.filter { socketsOfTree[$0.ino] != nil }.map(\.local))
        for c in tcp.sorted(by: { $0.ino < $1.ino }) {
            guard let (t, fd) = socketsOfTree[c.ino], !treeLocal.contains(c.remote) else { continue }
            out.append(PreflightFinding(severity: .warning, kind: "tcp-peer", pid: t.pid, process: t.comm, fd: fd,
                                        path: "tcp \(c.local) -> \(c.remote)",
                                        detail: "a TCP connection to a peer outside the container: a take keeps it, but a rollback restores it closed (its peer has moved on), so the peer sees it end and must reconnect"))
        }
        return out.filter { $0.severity == .blocker } + out.filter { $0.severity == .warning }
    }

    static let SOCK_DGRAM_VALUE: Int32 = 2
    static let SOCK_SEQPACKET_VALUE: Int32 = 5

    static func socketInode(_ link: String) -> UInt32? {
        guard link.hasPrefix("socket:["), link.hasSuffix("]") else { return nil }
        return UInt32(link.dropFirst(8).dropLast())
    }

    /// "0100007F:1F90" (/proc/net/tcp: the address as the kernel stores it,
    /// in 32-bit words of host order) as "127.0.0.1:8080"; IPv6 as "[::1]:8080".
    static func address<S: StringProtocol>(_ hex: S) -> String {
        let parts = hex.split(separator: ":")
        guard parts.count == 2, let port = UInt16(parts[1], radix: 16) else { return String(hex) }
        let a = Array(parts[0].utf8)
        var bytes: [UInt8] = []
        for w in stride(from: 0, to: a.count - 7, by: 8) {
            guard let word = UInt32(String(decoding: a[w..<w + 8], as: UTF8.self), radix: 16) else { return String(hex) }
            bytes += withUnsafeBytes(of: word.littleEndian, Array.init)
        }
        if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") + ":\(port)" }
        var text = [CChar](repeating: 0, count: 64)
        guard bytes.count == 16, inet_ntop(AF_INET6, bytes, &text, 64) != nil else { return String(hex) }
        return "[\(String(cString: text))]:\(port)"
    }

    // MARK: observing

    /// Reads what `judge` needs of `pids` (tasks of one tree) from /proc,
    /// and the unix sockets and TCP connections of the tree's network
    /// namespace (`sharedNetwork`: crsnap's own).
    public static func observe(pids: [pid_t]) -> (tasks: [Task], unix: [UnixSocket], tcp: [TCPConnection], sharedNetwork: Bool) {
        var tasks: [Task] = []
        // The tasks of a tree mostly share one mount namespace: read its table once.
        var mountTables: [String: [Int: String]] = [:]
        for pid in pids {
            guard let status = Proc.status(pid) else { continue }
            func ids(_ key: String) -> [UInt32] {
                (Proc.field(key, in: status) ?? "").split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { UInt32($0) }
            }
            var files: [OpenFile] = []
            var mapped: Set<String> = []
            for (dir, isMap) in [("/proc/\(pid)/fd", false), ("/proc/\(pid)/map_files", true)] {
                for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
                    guard let link = Proc.fdTarget(path: "\(dir)/\(name)") else { continue }
                    // A file mapped in several ranges counts once.
                    if isMap && (!link.hasPrefix("/") || !mapped.insert(link).inserted) { continue }
                    var st = Glibc.stat()
                    let statted = stat("\(dir)/\(name)", &st) == 0
                    let allocated = statted ? UInt64(st.st_blocks) * 512 : 0
                    let shm = statted && OpenFiles.sharedMemoryDevice == UInt64(st.st_dev)
                    // No mount to read: the fd closed (or the range was
                    // unmapped) between its link and its fdinfo being read — a
                    // server opening and closing the files it serves, maybe
                    // under the same number again. It is not there to dump
                    // (an fdinfo without mnt_id is older than any kernel CRIU
                    // 4 runs on).
                    guard let mnt = isMap ? mapMountID(link: "\(dir)/\(name)") : OpenFiles.mountID(fdinfo: "/proc/\(pid)/fdinfo/\(name)") else {
                        continue
                    }
                    files.append(OpenFile(fd: isMap ? nil : Int32(name), link: link, mountID: mnt, allocated: allocated, sharedMemory: shm))
                }
            }
            let ns = Proc.fdTarget(path: "/proc/\(pid)/ns/mnt") ?? "pid \(pid)"
            let table = mountTables[ns] ?? mounts(pid: pid)
            mountTables[ns] = table
            tasks.append(Task(pid: pid, comm: Proc.comm(pid), uids: ids("Uid"), gids: ids("Gid"),
                              mounts: table, files: files))
        }
        let shared = pids.first.map { Proc.fdTarget(path: "/proc/\($0)/ns/net") == Proc.fdTarget(path: "/proc/self/ns/net") } ?? true
        guard let first = pids.first else { return (tasks, [], [], shared) }
        return (tasks, unixSockets(netnsOf: shared ? nil : first), tcpConnections(pid: first), shared)
    }

    /// A mapped file's mount: open it (map_files needs CAP_SYS_ADMIN, root has it) and ask fdinfo.
    static func mapMountID(link: String) -> Int? {
        let fd = open(link, O_CLOEXEC | 0o10000000)  // O_PATH
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        return OpenFiles.mountID(fd)
    }

    /// id -> filesystem type, from /proc/PID/mountinfo.
    static func mounts(pid: pid_t) -> [Int: String] {
        guard let text = try? Sys.readText("/proc/\(pid)/mountinfo") else { return [:] }
        var out: [Int: String] = [:]
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard let id = f.first.flatMap({ Int($0) }), let dash = f.firstIndex(of: "-"), dash + 1 < f.count else { continue }
            out[id] = String(f[dash + 1])
        }
        return out
    }

    /// The unix sockets of crsnap's network namespace, or of the one of `pid`.
    static func unixSockets(netnsOf pid: pid_t? = nil) -> [UnixSocket] {
        var buf: [crsnap_unix_socket] = []
        var n: Int32 = 0
        // Room for a host's worth; more when they did not all fit.
        for room in [1024, 16384, 262_144] {
            buf = [crsnap_unix_socket](repeating: crsnap_unix_socket(), count: room)
            n = buf.withUnsafeMutableBufferPointer { b in
                pid.map { crsnap_unix_sockets_in($0, b.baseAddress, Int32(b.count)) } ?? crsnap_unix_sockets(b.baseAddress, Int32(b.count))
            }
            if n < room { break }
        }
        guard n > 0 else { return [] }
        return buf[0..<Int(n)].map { s in
            var s = s
            let name = withUnsafeBytes(of: &s.name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            return UnixSocket(ino: s.ino, peer: s.peer, type: Int32(s.type), name: name)
        }
    }

    /// Established connections (state 01) from /proc/PID/net/tcp and tcp6.
    static func tcpConnections(pid: pid_t) -> [TCPConnection] {
        var out: [TCPConnection] = []
        for file in ["tcp", "tcp6"] {
            guard let text = try? Sys.readText("/proc/\(pid)/net/\(file)") else { continue }
            for line in text.split(separator: "\n").dropFirst() {
                let f = line.split(separator: " ")
                guard f.count > 9, f[3] == "01", let ino = UInt32(f[9]) else { continue }
                out.append(TCPConnection(ino: ino, local: address(f[1]), remote: address(f[2])))
            }
        }
        return out
    }
}
