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
/// attributes are not kept.
public struct DirectoryTar {
    public struct Entry {
        public var header: Tar.Header
        /// A regular file's path, read when the entry is written.
        public var source: String?
    }

    public private(set) var entries: [Entry] = []
    /// Bytes of the whole tar stream, its two end blocks included.
    public private(set) var size: UInt64 = UInt64(Tar.endBytes)

    /// Plans a tar of everything below `root`, names relative to it.
    /// `include(relative path, lstat)` decides each entry; false leaves it
    /// out, a directory with all it holds.
    public init(root: String, include: (String, stat) -> Bool = { _, _ in true }) throws {
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
            entries.append(Entry(header: h, source: source))
            size += UInt64(Tar.encode(h).count) + h.size + UInt64(Tar.padding(h.size).count)
            if h.kind == .directory { try walk(root, relPath, include: include, firstNames: &firstNames) }
        }
    }

    /// glibc's encoding of a device number (sys/sysmacros.h).
    static func major(_ dev: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))) }
    static func minor(_ dev: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))) }

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
