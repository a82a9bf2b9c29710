import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The place crsnap keeps containers and snapshots: a btrfs filesystem, or a
/// btrfs image file loop-mounted under the given path when that path is not
/// on btrfs (so crsnap works on any machine).
///
/// Layout of `root`:
///   crsnap-store.json                 format version and this store's id
///   network.json                      bridge and subnet of bridged containers (`crsnap network set`)
///   network.lock                      flock: one address or port lease at a time
///   containers/NAME/config.json       how the container was started
///   containers/NAME/state.json        monitor and init pids (written by the monitor)
///   containers/NAME/lock              flock: one take/rollback/stop at a time
///   containers/NAME/journal.json      the operation in progress, if any
///   containers/NAME/fs                the writable volume (btrfs subvolume)
///   containers/NAME/root              where the container root is mounted
///   containers/NAME/log               the container's stdout and stderr
///   containers/NAME/next-id           the next snapshot number
///   containers/NAME/snapshots/N/      manifest.json, images/ (CRIU), fs (read-only subvolume)
public final class Store {
    public static let defaultPath = "/var/lib/crsnap"
    public static let imageName = "btrfs.img"
    public static let imageMountName = "data"
    public static let defaultImageSize: UInt64 = 16 << 30

    /// What the user named.
    public let path: String
    /// The btrfs directory everything lives in.
    public let root: String
    public let id: String
    public let backend: SnapshotBackend
    /// True when `root` is a loop-mounted image crsnap made.
    public let usesImage: Bool

    struct Header: Codable {
        var format: Int
        var id: String
        /// "copy" for a store kept as plain directories on a filesystem
        /// without subvolumes (`crsnap init --backend copy`); nil: btrfs.
        var backend: String?
        /// A copy store whose filesystem clones files (xfs with reflink=1).
        var reflink: Bool? = nil
    }

    /// What `crsnap init --backend` asks for.
    public enum Kind: String, CaseIterable, Sendable {
        /// btrfs: the path itself when it is on btrfs, else a loop-mounted btrfs image in it.
        case btrfs
        /// Plain directories on the path's own filesystem; snapshots are copies.
        case copy
    }

    init(path: String, root: String, id: String, backend: SnapshotBackend, usesImage: Bool) {
        self.path = path
        self.root = root
        self.id = id
        self.backend = backend
        self.usesImage = usesImage
    }

    /// The store path from --store, $CRSNAP_STORE or the default.
    public static func resolvePath(_ option: String?) throws -> String {
        let raw = option ?? ProcessInfo.processInfo.environment["CRSNAP_STORE"] ?? defaultPath
        guard !raw.isEmpty else { throw CrsnapError(.usage, "invalid store path: it is empty (--store or CRSNAP_STORE)") }
        guard raw.hasPrefix("/") else {
            throw CrsnapError(.usage, "invalid store path \"\(raw)\": it must be absolute")
        }
        guard !raw.contains("\0"), !raw.split(separator: "/").contains("..") else {
            throw CrsnapError(.usage, "invalid store path \"\(raw)\": it must not contain '..'")
        }
        return (raw as NSString).standardizingPath
    }

    /// Opens the store at `path`, creating it (and a btrfs image when the path
    /// is not on btrfs) on first use.
    /// `imageSize` defaults to $CRSNAP_STORE_IMAGE_SIZE, else 16 GiB.
    public static func open(_ path: String, imageSize: UInt64? = nil, kind: Kind? = nil) throws -> Store {
        if Sys.exists(path) && !Sys.isDirectory(path) {
            throw CrsnapError(.usage, "store path \(path) exists and is not a directory")
        }
        let imageSize = try imageSize ?? imageSizeFromEnvironment()
        try makeDirectories(path)
        _ = chmod(path, 0o700)
        let copyHeader = try? JSON.read(Header.self, from: "\(path)/crsnap-store.json")
        if let copyHeader, copyHeader.backend == Kind.copy.rawValue {
            if kind == .btrfs { throw CrsnapError(.usage, "store \(path) is a copy store; it cannot become a btrfs store") }
            try Sys.mkdir("\(path)/containers", mode: 0o700, existOK: true)
            return Store(path: path, root: path, id: copyHeader.id, backend: CopyBackend(reflinks: copyHeader.reflink ?? false), usesImage: false)
        }
        if kind == .copy {
            if Sys.exists("\(path)/crsnap-store.json") || Sys.exists("\(path)/\(imageName)") {
                throw CrsnapError(.usage, "store \(path) already exists as a btrfs store")
            }
            let header = Header(format: 1, id: String(format: "%08x", UInt32.random(in: 0...UInt32.max)), backend: Kind.copy.rawValue,
                                reflink: CopyBackend.probeReflink(in: path))
            try JSON.write(header, to: "\(path)/crsnap-store.json")
            try Sys.mkdir("\(path)/containers", mode: 0o700, existOK: true)
            return Store(path: path, root: path, id: header.id, backend: CopyBackend(reflinks: header.reflink ?? false), usesImage: false)
        }
        var root = path
        var usesImage = false
        if !Btrfs.isBtrfs(path) {
            root = "\(path)/\(imageMountName)"
            usesImage = true
            try mountImage(store: path, mountPoint: root, size: imageSize)
        }
        _ = chmod(root, 0o700)
        let headerPath = "\(root)/crsnap-store.json"
        let header: Header
        if let data = try? Sys.readFile(headerPath) {
            do {
                header = try JSONDecoder().decode(Header.self, from: Data(data))
            } catch {
                throw CrsnapError(.failed, "store \(path): \(headerPath) does not parse: \(error)")
            }
            guard header.format == 1 else {
                throw CrsnapError(.failed, "store \(path) has format \(header.format); this crsnap reads format 1")
            }
        } else {
            header = Header(format: 1, id: String(format: "%08x", UInt32.random(in: 0...UInt32.max)), backend: nil)
            try Sys.writeAtomically(headerPath, Array(try JSONEncoder().encode(header)))
        }
        try Sys.mkdir("\(root)/containers", mode: 0o700, existOK: true)
        let backend = try SnapshotBackends.forPath(root)
        return Store(path: path, root: root, id: header.id, backend: backend, usesImage: usesImage)
    }

    /// $CRSNAP_STORE_IMAGE_SIZE: bytes, or a number with K, M, G or T (binary
    /// units); at least 128M (mkfs.btrfs needs about 114 MiB).
    static func imageSizeFromEnvironment() throws -> UInt64 {
        guard let raw = ProcessInfo.processInfo.environment["CRSNAP_STORE_IMAGE_SIZE"] else { return defaultImageSize }
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var digits = Substring(raw)
        var mult: UInt64 = 1
        if let last = raw.last?.uppercased().first, let m = units[last] {
            mult = m
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let n = UInt64(digits),
              n.multipliedReportingOverflow(by: mult).overflow == false else {
            throw CrsnapError(.usage, "invalid CRSNAP_STORE_IMAGE_SIZE \"\(raw)\": expected bytes or a number with K, M, G or T, e.g. 300M")
        }
        let size = n * mult
        guard size >= 128 << 20 else {
            throw CrsnapError(.usage, "invalid CRSNAP_STORE_IMAGE_SIZE \"\(raw)\": the store image needs at least 128M")
        }
        return size
    }

    static func makeDirectories(_ path: String) throws {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += "/\(part)"
            try Sys.mkdir(prefix, mode: 0o755, existOK: true)
        }
    }

    /// Mounts `store`/btrfs.img at `mountPoint`, making the image first if needed.
    static func mountImage(store: String, mountPoint: String, size: UInt64) throws {
        try Sys.mkdir(mountPoint, mode: 0o700, existOK: true)
        if Btrfs.isBtrfs(mountPoint) && Mounts.isMountPoint(mountPoint) { return }
        let image = "\(store)/\(imageName)"
        if !Sys.exists(image) {
            let fd = try Sys.open(image, O_RDWR | O_CREAT | O_EXCL, mode: 0o600)
            let ok = ftruncate(fd, off_t(size)) == 0
            let e = errno
            Sys.close(fd)
            guard ok else {
                try? Sys.unlink(image)
                throw SystemError("truncate", image, errno: e)
            }
            do {
                try Program.run(["mkfs.btrfs", "-q", image])
            } catch {
                try? Sys.unlink(image)
                throw CrsnapError(.failed, "creating the btrfs image for store \(store): \(error)")
            }
        }
        do {
            try Mounts.mount(source: image, target: mountPoint, type: "btrfs", options: "loop")
        } catch {
            throw CrsnapError(.failed, "mounting the store image \(image) at \(mountPoint): \(error)")
        }
    }

    /// What one take costs on this store, for `crsnap doctor`.
    public var costNote: String {
        backend.capabilities.contains(.constantTimeSnapshot)
            ? "a take's filesystem snapshot is O(1) (\(backend.name) snapshot), whatever the data size"
            : backend.capabilities.contains(.cloneCopies)
            ? "no subvolumes here, but the filesystem clones files: every take clones the container's writable files inside the freeze (time grows with their number, not their size); use btrfs for O(1) snapshots"
            : "no subvolumes here: every take copies the container's writable files inside the freeze (time grows with their size); use btrfs for O(1) snapshots"
    }

    /// Opens an existing store without creating anything (for read-only commands).
    public static func openExisting(_ path: String) throws -> Store {
        if Sys.exists(path) && !Sys.isDirectory(path) {
            throw CrsnapError(.usage, "store path \(path) exists and is not a directory")
        }
        if !Sys.isDirectory(path) {
            throw CrsnapError(.notFound, "no store at \(path) (it is made on first `crsnap run` or by `crsnap init`)")
        }
        return try open(path)
    }

    // MARK: layout

    public var containersDir: String { "\(root)/containers" }

    public func containerDir(_ name: String) -> String { "\(containersDir)/\(name)" }

    public func containerNames() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: containersDir)) ?? []
        return names.filter { (try? Names.validate($0)) != nil && Sys.isDirectory(containerDir($0)) }.sorted()
    }
}
