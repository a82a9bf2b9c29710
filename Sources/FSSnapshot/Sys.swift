import CLibmount
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: what was done, to what, and the errno it gave.
public struct SystemError: Error, CustomStringConvertible, Equatable {
    public let operation: String
    public let subject: String
    public let errno: Int32

    public init(_ operation: String, _ subject: String, errno: Int32) {
        self.operation = operation
        self.subject = subject
        self.errno = errno
    }

    public var description: String {
        "\(operation) \(subject): \(String(cString: strerror(errno)))"
    }
}

/// Thin throwing wrappers over the system calls crsnap uses directly. Each one
/// retries EINTR and names the call and its subject in the error.
public enum Sys {
    @discardableResult
    public static func check(_ op: String, _ subject: String, _ body: () -> Int32) throws -> Int32 {
        while true {
            let r = body()
            if r >= 0 { return r }
            let e = Glibc.errno
            if e == EINTR { continue }
            throw SystemError(op, subject, errno: e)
        }
    }

    /// Where the symbolic link (or /proc magic link) at `path` points.
    public static func readLink(_ path: String) throws -> String {
        // PATH_MAX, and room for what /proc appends (" (deleted)").
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 16)
        let n = readlink(path, &buf, buf.count - 1)
        guard n > 0 else { throw SystemError("readlink", path, errno: errno) }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The extended attributes of `path` itself (a symbolic link's own, not
    /// its target's), by name; none where the filesystem keeps none.
    public static func extendedAttributes(_ path: String) throws -> [String: [UInt8]] {
        var size = llistxattr(path, nil, 0)
        if size < 0 && (errno == ENOTSUP || errno == ENODATA) { return [:] }
        guard size >= 0 else { throw SystemError("llistxattr", path, errno: errno) }
        if size == 0 { return [:] }
        var names = [CChar](repeating: 0, count: size)
        size = llistxattr(path, &names, names.count)
        guard size >= 0 else { throw SystemError("llistxattr", path, errno: errno) }
        var out: [String: [UInt8]] = [:]
        for raw in names[..<size].split(separator: 0) {
            let name = String(decoding: raw.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let n = lgetxattr(path, name, nil, 0)
            if n < 0 && errno == ENODATA { continue }  // removed meanwhile
            guard n >= 0 else { throw SystemError("lgetxattr \(name)", path, errno: errno) }
            var value = [UInt8](repeating: 0, count: n)
            let got = value.withUnsafeMutableBytes { lgetxattr(path, name, $0.baseAddress, n) }
            guard got >= 0 else { throw SystemError("lgetxattr \(name)", path, errno: errno) }
            out[name] = Array(value[..<got])
        }
        return out
    }

    /// Sets extended attribute `name` of `path` itself (not following a
    /// symbolic link).
    public static func setExtendedAttribute(_ path: String, _ name: String, _ value: [UInt8]) throws {
        try check("lsetxattr \(name)", path) {
            value.withUnsafeBytes { lsetxattr(path, name, $0.baseAddress, value.count, 0) }
        }
    }

    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws -> Int32 {
        try check("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
    }

    public static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    public static func mkdir(_ path: String, mode: mode_t = 0o700, existOK: Bool = false) throws {
        if Glibc.mkdir(path, mode) != 0 {
            let e = Glibc.errno
            if e == EEXIST && existOK { return }
            throw SystemError("mkdir", path, errno: e)
        }
    }

    public static func rename(_ from: String, _ to: String) throws {
        try check("rename", "\(from) to \(to)") { Glibc.rename(from, to) }
    }

    public static func unlink(_ path: String, missingOK: Bool = true) throws {
        if Glibc.unlink(path) != 0 {
            let e = Glibc.errno
            if e == ENOENT && missingOK { return }
            throw SystemError("unlink", path, errno: e)
        }
    }

    public static func rmdir(_ path: String, missingOK: Bool = true) throws {
        if Glibc.rmdir(path) != 0 {
            let e = Glibc.errno
            if e == ENOENT && missingOK { return }
            throw SystemError("rmdir", path, errno: e)
        }
    }

    public static func exists(_ path: String) -> Bool {
        var st = Glibc.stat()
        return lstat(path, &st) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = Glibc.stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func fileStatus(_ path: String) throws -> Glibc.stat {
        var st = Glibc.stat()
        try check("stat", path) { stat(path, &st) }
        return st
    }

    /// The filesystem magic of the filesystem holding `path` (statfs f_type).
    public static func filesystemType(_ path: String) throws -> UInt {
        var s = CLibmount.statfs()
        try check("statfs", path) { statfs(path, &s) }
        return UInt(bitPattern: Int(s.f_type))
    }

    /// The filesystem magic of the filesystem holding the open file `fd`.
    public static func filesystemType(fd: Int32) -> UInt? {
        var s = CLibmount.statfs()
        guard fstatfs(fd, &s) == 0 else { return nil }
        return UInt(bitPattern: Int(s.f_type))
    }

    public static func syncfs(_ path: String) throws {
        let fd = try open(path, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        try check("syncfs", path) { crsnap_syncfs(fd) }
    }

    public static func fsync(_ fd: Int32, _ subject: String) throws {
        try check("fsync", subject) { Glibc.fsync(fd) }
    }

    public static func write(_ fd: Int32, _ data: [UInt8], _ subject: String) throws {
        var offset = 0
        while offset < data.count {
            let n = try data.withUnsafeBytes { buf in
                try check("write", subject) {
                    Int32(truncatingIfNeeded: Glibc.write(fd, buf.baseAddress! + offset, data.count - offset))
                }
            }
            offset += Int(n)
        }
    }

    public static func readFile(_ path: String) throws -> [UInt8] {
        let fd = try open(path, O_RDONLY)
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try buf.withUnsafeMutableBytes { b in
                try check("read", path) { Int32(truncatingIfNeeded: Glibc.read(fd, b.baseAddress, b.count)) }
            }
            if n == 0 { break }
            out.append(contentsOf: buf[0..<Int(n)])
        }
        return out
    }

    /// Everything fd `fd` gives until EOF (or a read error), retrying EINTR:
    /// for the read end of a pipe whose writers all close it.
    public static func readToEnd(_ fd: Int32) -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n > 0 { out.append(contentsOf: buf[0..<n]); continue }
            if n < 0 && Glibc.errno == EINTR { continue }
            return out
        }
    }

    public static func readText(_ path: String) throws -> String {
        String(decoding: try readFile(path), as: UTF8.self)
    }

    /// Writes a file so that a reader sees the old content or the new, never a
    /// mix: temp file, fsync, rename, fsync of the directory.
    public static func writeAtomically(_ path: String, _ data: [UInt8], mode: mode_t = 0o600) throws {
        let dir = (path as NSString).deletingLastPathComponent
        let tmp = "\(path).tmp-\(getpid())"
        let fd = try open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
        do {
            try write(fd, data, tmp)
            try fsync(fd, tmp)
            close(fd)
            try rename(tmp, path)
        } catch {
            close(fd)
            _ = Glibc.unlink(tmp)
            throw error
        }
        try fsyncDirectory(dir.isEmpty ? "." : dir)
    }

    public static func fsyncDirectory(_ path: String) throws {
        let fd = try open(path, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        try fsync(fd, path)
    }

    /// Recursively removes a directory tree that holds no subvolumes or mounts.
    public static func removeTree(_ path: String) throws {
        guard exists(path) else { return }
        do {
            try FileManager.default.removeItem(atPath: path)
        } catch {
            throw SystemError("remove", path, errno: EIO)
        }
    }

    /// Total bytes of the regular files below `path` (not following links).
    public static func treeSize(_ path: String) -> UInt64 {
        guard let e = FileManager.default.enumerator(atPath: path) else { return 0 }
        var total: UInt64 = 0
        while let rel = e.nextObject() as? String {
            var st = Glibc.stat()
            if lstat("\(path)/\(rel)", &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG {
                total += UInt64(st.st_size)
            }
        }
        return total
    }
}

/// Runs a program with argv (never a shell) and waits for it.
public enum Program {
    public struct Failure: Error, CustomStringConvertible {
        public let argv: [String]
        public let status: Int32
        public let output: String
        public var description: String {
            let out = output.trimmingCharacters(in: .whitespacesAndNewlines)
            return "\(argv.joined(separator: " ")) exited with status \(status)" + (out.isEmpty ? "" : ": \(out)")
        }
    }

    /// Looks `name` up in PATH (plus the sbin directories root expects).
    public static func find(_ name: String) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin"
        for dir in path.split(separator: ":") where !dir.isEmpty {
            let candidate = "\(dir)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    /// Runs argv with stdin from /dev/null and stdout+stderr captured (up to the
    /// end, nothing is cut). Throws `Failure` on a non-zero exit.
    @discardableResult
    public static func run(_ argv: [String]) throws -> String {
        guard let path = find(argv[0]) else {
            throw SystemError("exec", argv[0], errno: ENOENT)
        }
        var fds: [Int32] = [0, 0]
        try Sys.check("pipe", argv[0]) { crsnap_pipe2(&fds, O_CLOEXEC) }
        let null = try Sys.open("/dev/null", O_RDONLY)
        defer { Sys.close(null) }
        let pid = spawn(path: path, argv: argv, env: ProcessInfo.processInfo.environment,
                        fdmap: [null, fds[1], fds[1]], newSession: false)
        Sys.close(fds[1])
        guard pid > 0 else {
            let e = Glibc.errno
            Sys.close(fds[0])
            throw SystemError("exec", path, errno: e)
        }
        let output = Sys.readToEnd(fds[0])
        Sys.close(fds[0])
        let status = wait(pid)
        let text = String(decoding: output, as: UTF8.self)
        if status != 0 { throw Failure(argv: argv, status: status, output: text) }
        return text
    }

    /// fork+exec through the C shim: fd i of the child is fdmap[i].
    public static func spawn(path: String, argv: [String], env: [String: String],
                             fdmap: [Int32], newSession: Bool) -> pid_t {
        let envStrings = env.map { "\($0.key)=\($0.value)" }
        return withCStrings(argv) { cargv in
            withCStrings(envStrings) { cenv in
                fdmap.withUnsafeBufferPointer { map in
                    crsnap_spawn(path, cargv, cenv, map.baseAddress, Int32(map.count), newSession ? 1 : 0)
                }
            }
        }
    }

    /// `spawn` as pid 1 of new pid, mount and network namespaces (loopback
    /// only; see crsnap_spawn_isolated): returns the pid of the helper whose
    /// exit status is the program's, and whose death ends the program and
    /// everything it started.
    public static func spawnIsolated(path: String, argv: [String], env: [String: String], fdmap: [Int32]) throws -> pid_t {
        let envStrings = env.map { "\($0.key)=\($0.value)" }
        var stage: Int32 = 0, err: Int32 = 0
        let pid = withCStrings(argv) { cargv in
            withCStrings(envStrings) { cenv in
                fdmap.withUnsafeBufferPointer { map in
                    crsnap_spawn_isolated(path, cargv, cenv, map.baseAddress, Int32(map.count), &stage, &err)
                }
            }
        }
        guard pid > 0 else {
            let what = [Int32(CRSNAP_STAGE_UNSHARE.rawValue): "unshare pid, mount and network namespaces",
                        Int32(CRSNAP_STAGE_MOUNT_PRIVATE.rawValue): "make the mounts private",
                        Int32(CRSNAP_STAGE_LOOPBACK.rawValue): "bring the loopback device up",
                        Int32(CRSNAP_STAGE_MOUNT_PROC.rawValue): "mount /proc",
                        Int32(CRSNAP_STAGE_EXEC.rawValue): "exec"][stage] ?? "start"
            throw SystemError(what, path, errno: err)
        }
        return pid
    }

    /// waitpid, retrying EINTR; the exit status, or 128+signal.
    public static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if Glibc.errno != EINTR { return -1 }
        }
        return exitCode(status)
    }

    /// Waits for `pid` at most `timeout` seconds: its exit status (as
    /// `wait`), or nil when the time ran out, after it was SIGKILLed and reaped.
    public static func wait(_ pid: pid_t, timeout: Double) -> Int32? {
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(max(0, timeout) * 1e9)
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { return exitCode(status) }
            if r < 0 && Glibc.errno != EINTR { return -1 }
            if DispatchTime.now().uptimeNanoseconds >= deadline { break }
            usleep(10_000)
        }
        if pid > 1 { kill(pid, SIGKILL) }
        _ = wait(pid)
        return nil
    }

    public static func exitCode(_ status: Int32) -> Int32 {
        let sig = status & 0x7f
        return sig == 0 ? (status >> 8) & 0xff : 128 + sig
    }
}

/// A NULL-terminated C array of C strings, alive for the duration of `body`.
public func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let dup = strings.map { strdup($0) }
    defer { dup.forEach { free($0) } }
    var ptrs: [UnsafePointer<CChar>?] = dup.map { UnsafePointer($0) }
    ptrs.append(nil)
    return ptrs.withUnsafeBufferPointer { body($0.baseAddress!) }
}
