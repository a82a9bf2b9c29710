import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One path that differs between two trees, as the container sees it.
public struct TreeChange: Codable, Equatable, Sendable {
    public enum Change: String, Codable, Sendable { case added, changed, deleted }
    public var path: String
    public var change: Change

    public init(_ path: String, _ change: Change) {
        self.path = path
        self.change = change
    }
}

/// Lists what changed between two trees from metadata alone: a btrfs
/// snapshot shares unchanged inodes with its source (same inode number, same
/// ctime), so no file data is read. For an overlay root the trees are upper
/// dirs: a whiteout means deleted, and a path only one side has differs from
/// the host's file below (changed) or is new (added).
public enum TreeDiff {
    struct Entry {
        let st: stat
        var isDir: Bool { st.st_mode & S_IFMT == S_IFDIR }
        var isWhiteout: Bool { st.st_mode & S_IFMT == S_IFCHR && st.st_rdev == 0 }
    }

    /// `lower` is the overlay's read-only layer ("/"), nil for a subvolume root.
    public static func compare(old: String, new: String, lower: String?) throws -> [TreeChange] {
        var out: [TreeChange] = []
        try walk(old: old, new: new, rel: "", lower: lower, into: &out)
        // CRIU's link_remap.N files exist in a snapshot only because it was
        // taken inside the dump; they are not the container's files.
        return out.filter { !($0.path.split(separator: "/").last ?? "").hasPrefix("link_remap.") }
    }

    static func entries(_ dir: String) -> [String: Entry] {
        guard let d = opendir(dir) else { return [:] }
        defer { closedir(d) }
        var out: [String: Entry] = [:]
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            var st = stat()
            if lstat("\(dir)/\(name)", &st) == 0 { out[name] = Entry(st: st) }
        }
        return out
    }

    static func lowerHas(_ lower: String?, _ rel: String) -> Bool {
        guard let lower else { return false }
        var st = stat()
        return lstat("\(lower)\(rel)", &st) == 0
    }

    static func same(_ a: Entry, _ b: Entry, _ oldPath: String, _ newPath: String) -> Bool {
        if a.st.st_mode != b.st.st_mode || a.st.st_uid != b.st.st_uid || a.st.st_gid != b.st.st_gid { return false }
        if a.isDir { return true }
        if a.st.st_mode & S_IFMT == S_IFLNK { return (try? Sys.readLink(oldPath)) == (try? Sys.readLink(newPath)) }
        return a.st.st_ino == b.st.st_ino && a.st.st_size == b.st.st_size
            && a.st.st_ctim.tv_sec == b.st.st_ctim.tv_sec && a.st.st_ctim.tv_nsec == b.st.st_ctim.tv_nsec
            && a.st.st_mtim.tv_sec == b.st.st_mtim.tv_sec && a.st.st_mtim.tv_nsec == b.st.st_mtim.tv_nsec
    }

    /// Every path below a directory only one side has.
    static func all(_ dir: String, rel: String, _ change: TreeChange.Change, into out: inout [TreeChange]) {
        for (name, e) in entries(dir).sorted(by: { $0.key < $1.key }) where !e.isWhiteout {
            out.append(TreeChange("\(rel)/\(name)", change))
            if e.isDir { all("\(dir)/\(name)", rel: "\(rel)/\(name)", change, into: &out) }
        }
    }

    static func walk(old: String, new: String, rel: String, lower: String?, into out: inout [TreeChange]) throws {
        let a = entries(old), b = entries(new)
        for name in Set(a.keys).union(b.keys).sorted() {
            let path = "\(rel)/\(name)"
            switch (a[name], b[name]) {
            case let (x?, y?):
                if x.isWhiteout && y.isWhiteout { continue }
                if x.isWhiteout { out.append(TreeChange(path, .added)); if y.isDir { all("\(new)/\(name)", rel: path, .added, into: &out) }; continue }
                if y.isWhiteout { out.append(TreeChange(path, .deleted)); continue }
                if x.isDir && y.isDir {
                    if !same(x, y, "\(old)/\(name)", "\(new)/\(name)") { out.append(TreeChange(path, .changed)) }
                    try walk(old: "\(old)/\(name)", new: "\(new)/\(name)", rel: path, lower: lower, into: &out)
                } else if !same(x, y, "\(old)/\(name)", "\(new)/\(name)") {
                    out.append(TreeChange(path, .changed))
                }
            case let (x?, nil):
                if x.isWhiteout {
                    if lowerHas(lower, path) { out.append(TreeChange(path, .added)) }
                } else if lowerHas(lower, path) {
                    // Back to the host's version below.
                    out.append(TreeChange(path, .changed))
                } else {
                    out.append(TreeChange(path, .deleted))
                    if x.isDir { all("\(old)/\(name)", rel: path, .deleted, into: &out) }
                }
            case let (nil, y?):
                if y.isWhiteout {
                    if lowerHas(lower, path) { out.append(TreeChange(path, .deleted)) }
                } else if lowerHas(lower, path) {
                    out.append(TreeChange(path, .changed))
                    if y.isDir { try walk(old: "/nonexistent-\(getpid())", new: "\(new)/\(name)", rel: path, lower: lower, into: &out) }
                } else {
                    out.append(TreeChange(path, .added))
                    if y.isDir { all("\(new)/\(name)", rel: path, .added, into: &out) }
                }
            case (nil, nil):
                continue
            }
        }
    }
}
