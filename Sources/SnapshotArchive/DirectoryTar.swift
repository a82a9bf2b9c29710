import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A tar of a directory tree, planned before it is written: every entry's
/// header is made from `lstat` first, so the stream's exact size is known
/// before its first byte (it goes into an outer archive as one entry whose
/// header needs its size). For trees nothing writes to while they are read:
/// a snapshot. Directories come before what they hold, names in byte order;
/// a file with more than one name is stored once, its other names as hard
/// links; symbolic links are stored, not followed; sockets are left out (no
/// tar format holds one, and a restored process makes its own). Extended
/// attributes are kept when asked for (an overlay upper dir's opaque marks
/// are some). Times are whole seconds, as tar keeps them. `unpack` makes the
/// tree again.
public struct DirectoryTar {
    public struct Entry {
        public var header: Tar.Header
        /// A regular file's path, read when the entry is written.
        public var source: String?
    }

    public private(set) var entries: [Entry] = []
    /// Bytes of the whole tar stream, its two end blocks included.
    public private(set) var size: UInt64 = UInt64(Tar.endBytes)

    let xattrs: Bool

    /// Plans a tar of everything below `root`, names relative to it; with
    /// `withRoot`, `root`'s own owner, mode and attributes first, as "./".
    /// `include(relative path, lstat)` decides each entry; false leaves it
    /// out, a directory with all it holds. `xattrs`: with each entry's
    /// extended attributes.
    public init(root: String, withRoot: Bool = false, xattrs: Bool = false,
                include: (String, stat) -> Bool = { _, _ in true }) throws {
        self.xattrs = xattrs
        if withRoot {
            var st = stat()
            guard lstat(root, &st) == 0 else { throw SystemError("lstat", root, errno: errno) }
            guard st.st_mode & S_IFMT == S_IFDIR else { throw SystemError("archive", root, errno: ENOTDIR) }
            let h = Tar.Header(name: "./", size: 0, mode: UInt32(st.st_mode & 0o7777), mtime: UInt64(max(0, st.st_mtim.tv_sec)),
                               kind: .directory, uid: st.st_uid, gid: st.st_gid,
                               xattrs: xattrs ? try Sys.extendedAttributes(root) : [:])
            entries.append(Entry(header: h, source: nil))
            size += UInt64(Tar.encode(h).count)
        }
        var firstNames: [String: String] = [:]  // "dev:ino" -> name, for files with more than one name
        try walk(root, "", include: include, firstNames: &firstNames)
    }

    mutating func walk(_ root: String, _ rel: String, include: (String, stat) -> Bool,
                       firstNames: inout [String: String]) throws {
        let dirPath = rel.isEmpty ? root : "\(root)/\(rel)"
        guard let dir = opendir(dirPath) else { throw SystemError("opendir", dirPath, errno: errno) }
        var names: [String] = []
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(dir)
        for name in names.sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }) {
            let relPath = rel.isEmpty ? name : "\(rel)/\(name)"
            let path = "\(root)/\(relPath)"
            var st = stat()
            guard lstat(path, &st) == 0 else { throw SystemError("lstat", path, errno: errno) }
            guard include(relPath, st) else { continue }
            var h = Tar.Header(name: relPath, size: 0, mode: UInt32(st.st_mode & 0o7777),
                               mtime: UInt64(max(0, st.st_mtim.tv_sec)), uid: st.st_uid, gid: st.st_gid)
            var source: String?
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                h.kind = .directory
                h.name += "/"
            case S_IFREG:
                let key = "\(st.st_dev):\(st.st_ino)"
                if st.st_nlink > 1, let first = firstNames[key] {
                    h.kind = .hardlink(to: first)
                } else {
                    if st.st_nlink > 1 { firstNames[key] = relPath }
                    h.size = UInt64(st.st_size)
                    source = path
                }
            case S_IFLNK:
                h.kind = .symlink(to: try Sys.readLink(path))
            case S_IFCHR:
                h.kind = .characterDevice(major: Self.major(UInt64(st.st_rdev)), minor: Self.minor(UInt64(st.st_rdev)))
            case S_IFBLK:
                h.kind = .blockDevice(major: Self.major(UInt64(st.st_rdev)), minor: Self.minor(UInt64(st.st_rdev)))
            case S_IFIFO:
                h.kind = .fifo
            default:
                continue  // a socket
            }
            if xattrs, !isHardlink(h.kind) { h.xattrs = try Sys.extendedAttributes(path) }
            entries.append(Entry(header: h, source: source))
            size += UInt64(Tar.encode(h).count) + h.size + UInt64(Tar.padding(h.size).count)
            if h.kind == .directory { try walk(root, relPath, include: include, firstNames: &firstNames) }
        }
    }

    func isHardlink(_ k: Tar.Header.Kind) -> Bool {
        if case .hardlink = k { return true }
        return false
    }

    /// glibc's encoding of a device number (sys/sysmacros.h).
    static func major(_ dev: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))) }
    static func minor(_ dev: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))) }
    static func device(_ major: UInt32, _ minor: UInt32) -> dev_t {
        let a = UInt64(major), b = UInt64(minor)
        return dev_t(((a & 0xfff) << 8) | ((a & ~UInt64(0xfff)) << 32) | (b & 0xff) | ((b & ~UInt64(0xff)) << 12))
    }

    /// Writes the planned entries and the end blocks into `sink` (left
    /// open); a regular file that no longer has its planned size is an error.
    public func write(into sink: ByteSink) throws {
        let tar = TarWriter(sink)
        for e in entries {
            if let path = e.source {
                let fd = try Sys.open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
                defer { Sys.close(fd) }
                var st = stat()
                guard fstat(fd, &st) == 0, UInt64(st.st_size) == e.header.size else {
                    throw ArchiveError("\(path) changed while it was archived (it had \(e.header.size) bytes)")
                }
                try tar.add(e.header, from: FileSource(fd: fd, name: path))
            } else {
                try tar.add(e.header)
            }
        }
        try tar.end()
    }
}

extension DirectoryTar {
    /// Makes the tree a `DirectoryTar` stream holds (read from `reader`,
    /// opened with `tree: true`) below `root`, an empty directory: every
    /// kind of entry, owners, modes, times and extended attributes ("./"
    /// gives `root`'s own). The stream cannot reach outside `root`: a name
    /// that is absolute or holds "..", an entry whose directory did not come
    /// before it, a hard link to anything but a regular file it made, or a
    /// name given twice is an error (what was made stays, for the caller to
    /// remove). Directories get their modes and times last, once nothing
    /// more is made in them. The regular files' bytes.
    @discardableResult
    public static func unpack(_ reader: TarReader, into root: String) throws -> UInt64 {
        var dirs: Set<String> = [""]
        var files: Set<String> = []
        var made: Set<String> = []
        var later: [(String, Tar.Header)] = []
        var bytes: UInt64 = 0
        func relative(_ name: String) throws -> String {
            var parts = name.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
            if parts.first == "." { parts.removeFirst() }
            guard !name.hasPrefix("/"), !parts.contains(where: { $0 == "." || $0 == ".." }), !name.contains("\0") else {
                throw ArchiveError("the tree holds \"\(name)\", a name that leads outside it")
            }
            return parts.joined(separator: "/")
        }
        while let h = try reader.next() {
            let rel = try relative(h.name)
            let path = rel.isEmpty ? root : "\(root)/\(rel)"
            if rel.isEmpty {
                guard h.kind == .directory else { throw ArchiveError("the tree's top \"\(h.name)\" is not a directory") }
                later.append((path, h))
                continue
            }
            let parent = rel.split(separator: "/").dropLast().joined(separator: "/")
            guard dirs.contains(parent) else {
                throw ArchiveError("the tree holds \(h.name) before its directory \(parent)/ (or in something that is not one)")
            }
            guard made.insert(rel).inserted else { throw ArchiveError("the tree holds \(h.name) twice") }
            switch h.kind {
            case .directory:
                try Sys.mkdir(path, mode: 0o700)
                dirs.insert(rel)
                later.append((path, h))
                continue
            case .file:
                let fd = try Sys.open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode: 0o600)
                defer { Sys.close(fd) }
                try reader.copy(to: FileSink(fd: fd, name: path))
                bytes += h.size
                files.insert(rel)
            case .hardlink(let to):
                let target = try relative(to)
                guard files.contains(target) else {
                    throw ArchiveError("the tree holds \(h.name) as another name of \(to), which is not a file made before it")
                }
                try Sys.check("link \(root)/\(target)", path) { link("\(root)/\(target)", path) }
                continue  // one file: its owner, mode and times are the first name's
            case .symlink(let to):
                try Sys.check("symlink", path) { symlink(to, path) }
            case .characterDevice(let major, let minor):
                try Sys.check("mknod", path) { mknod(path, S_IFCHR | 0o600, device(major, minor)) }
            case .blockDevice(let major, let minor):
                try Sys.check("mknod", path) { mknod(path, S_IFBLK | 0o600, device(major, minor)) }
            case .fifo:
                try Sys.check("mkfifo", path) { mkfifo(path, 0o600) }
            }
            try setAttributes(path, h)
        }
        for (path, h) in later.reversed() { try setAttributes(path, h) }
        return bytes
    }

    /// Owner, then mode (a chown clears set-id bits), then extended
    /// attributes (a chown clears file capabilities), then times.
    static func setAttributes(_ path: String, _ h: Tar.Header) throws {
        try Sys.check("lchown", path) { lchown(path, h.uid, h.gid) }
        if case .symlink = h.kind {} else {
            try Sys.check("chmod", path) { chmod(path, mode_t(h.mode & 0o7777)) }
        }
        for (name, value) in h.xattrs.sorted(by: { $0.key < $1.key }) {
            try Sys.setExtendedAttribute(path, name, value)
        }
        var times = [timespec(tv_sec: Int(h.mtime), tv_nsec: 0), timespec(tv_sec: Int(h.mtime), tv_nsec: 0)]
        try Sys.check("utimensat", path) { utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) }
    }
}
