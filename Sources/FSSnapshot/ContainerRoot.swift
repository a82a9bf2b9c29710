import CLibmount
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How a container's root is built from its writable volume.
public enum RootKind: String, Codable, Sendable {
    /// overlay: lower = the host's "/", upper and work dirs in the volume.
    case overlay
    /// The volume is the root itself (made from --rootfs DIR).
    case subvolume
}

/// The on-disk shape of a container's writable volume and how it is mounted.
public enum ContainerRoot {
    /// Character devices a container gets as files in its root.
    static let devices: [(String, UInt32, UInt32)] = [
        ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0),
    ]

    /// Lays out a fresh volume for `kind` (the volume itself must exist).
    /// For overlay, /tmp and /dev in the upper dir are opaque: the container
    /// gets a private /tmp and only the device nodes crsnap gives it.
    public static func prepare(volume: String, kind: RootKind) throws {
        switch kind {
        case .overlay:
            let upper = "\(volume)/upper"
            try Sys.mkdir(upper, mode: 0o755, existOK: true)
            try Sys.mkdir("\(volume)/work", mode: 0o700, existOK: true)
            try makeOpaqueDir("\(upper)/tmp", mode: 0o1777)
            try makeOpaqueDir("\(upper)/dev", mode: 0o755)
            try makeDevices("\(upper)/dev")
        case .subvolume:
            for (dir, mode) in [("proc", 0o555), ("dev", 0o755), ("tmp", 0o1777)] as [(String, mode_t)] {
                try Sys.mkdir("\(volume)/\(dir)", mode: mode, existOK: true)
                _ = chmod("\(volume)/\(dir)", mode)
            }
            try makeDevices("\(volume)/dev")
        }
    }

    /// Mounts the container root of `volume` at `target` (a directory).
    public static func mount(volume: String, kind: RootKind, at target: String) throws {
        switch kind {
        case .overlay:
            try Mounts.overlay(lower: "/", upper: "\(volume)/upper", work: "\(volume)/work", at: target)
        case .subvolume:
            try Mounts.bind(volume, at: target)
        }
    }

    /// Where the container's own files are in the volume ("/" inside maps here).
    public static func filesDir(volume: String, kind: RootKind) -> String {
        kind == .overlay ? "\(volume)/upper" : volume
    }

    /// Makes sure directory `path` (inside the container) exists in the
    /// volume, creating missing parents (mode 0755).
    public static func makeMountPoint(volume: String, kind: RootKind, path: String) throws {
        // With an overlay, a directory the host has is in the container already.
        if kind == .overlay && Sys.isDirectory(path) { return }
        var current = filesDir(volume: volume, kind: kind)
        for part in path.split(separator: "/") {
            current += "/\(part)"
            try Sys.mkdir(current, mode: 0o755, existOK: true)
        }
    }

    /// Replaces what volume `new` holds at each of `paths` (inside the
    /// container) with what volume `old` holds there: a copy that shares
    /// extents where the filesystem can (`cp -a --reflink=auto`: owners,
    /// modes, times, xattrs, and an overlay upper dir's whiteouts kept). A
    /// path `old` does not hold is removed from `new` (for an overlay, the
    /// host's files show through there again). Missing parents in `new` are
    /// made with the mode and owner they have in `old`.
    public static func carryOver(_ paths: [String], from old: String, into new: String, kind: RootKind) throws {
        let src = filesDir(volume: old, kind: kind), dst = filesDir(volume: new, kind: kind)
        for path in paths {
            let parents = path.split(separator: "/").dropLast().reduce(into: [String]()) { $0.append(($0.last ?? "") + "/\($1)") }
            // The container's own symlinks must not lead out of its files:
            // every parent is a real directory or missing, on both sides.
            func realDirectories(_ base: String) throws -> Bool {
                for p in parents {
                    var st = Glibc.stat()
                    guard lstat(base + p, &st) == 0 else { return false }
                    guard st.st_mode & S_IFMT == S_IFDIR else {
                        throw SystemError("keep \(path): \(p) is not a directory in", base, errno: ENOTDIR)
                    }
                }
                return true
            }
            let present = try realDirectories(src)
            _ = try realDirectories(dst)
            let from = src + path, to = dst + path
            if Sys.exists(to) { try Sys.removeTree(to) }
            guard present, Sys.exists(from) else { continue }
            for p in parents where !Sys.exists(dst + p) {
                let st = try Sys.fileStatus(src + p)
                try Sys.mkdir(dst + p, mode: st.st_mode & 0o7777)
                try Sys.check("chown", dst + p) { chown(dst + p, st.st_uid, st.st_gid) }
                _ = chmod(dst + p, st.st_mode & 0o7777)
            }
            try Program.run(["cp", "-a", "--reflink=auto", "--", from, to])
        }
    }

    static func makeOpaqueDir(_ path: String, mode: mode_t) throws {
        try Sys.mkdir(path, mode: mode, existOK: true)
        _ = chmod(path, mode)
        let value = "y"
        try Sys.check("setxattr trusted.overlay.opaque", path) {
            setxattr(path, "trusted.overlay.opaque", value, 1, 0)
        }
    }

    static func makeDevices(_ dir: String) throws {
        // POSIX shared memory lives in the writable root, so it is rolled back too.
        try Sys.mkdir("\(dir)/shm", mode: 0o1777, existOK: true)
        _ = chmod("\(dir)/shm", 0o1777)
        for (name, major, minor) in devices {
            let path = "\(dir)/\(name)"
            if Sys.exists(path) { continue }
            let dev = dev_t((major << 8) | minor)
            try Sys.check("mknod", path) { mknod(path, S_IFCHR | 0o666, dev) }
            _ = chmod(path, 0o666)
        }
    }
}
