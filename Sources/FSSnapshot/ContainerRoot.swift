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
