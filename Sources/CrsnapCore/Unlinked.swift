import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// Unlinked open files (nlink 0: unlinked after opening, or O_TMPFILE) at the
/// frozen instant, without copying their bytes:
///
/// - before the dump, the tree's fds and mappings are scanned and each such
///   file is declared external to CRIU ("file[MNT_ID:INODE]"), so CRIU records
///   a reference instead of copying it as a ghost file (no size limit);
/// - in post-dump, with the tasks frozen, each file is cloned (FICLONE) into
///   the snapshot's unlinked/ directory. On an overlay root the clone goes
///   through a scratch file on the overlay (the kernel clones overlay files
///   only into overlay files), whose upper file is then cloned into the store.
///   Where the filesystem cannot clone, the data is copied and reported;
/// - after the dump (thawed), the images are rewritten so that each captured
///   file is a plain file at /.crsnap-unlinked/FILE in the container;
/// - for a restore, each copy is cloned into the restored root's files at
///   that path before the root is mounted; CRIU opens it there, inside the
///   restored mount namespace, and at post-restore (tasks not yet resumed)
///   the monitor unlinks it. The restored tasks hold an unlinked file again,
///   on their own root mount, with the content, size, offset and flags it had.
///
/// Files on tmpfs (memfd, shared anonymous memory, --tmpfs mounts) stay
/// CRIU's: it keeps them in the images.
public enum Unlinked {
    /// The scratch directory at the top of a container's files.
    public static let scratchDir = ".crsnap-unlinked"

    /// Filesystems a container's own files live on.
    static let rootFilesystems: Set<UInt> = [
        0x9123_683E,  // btrfs
        0x794C_7630,  // overlay
        0xEF53,  // ext4
        0x5846_5342,  // xfs
    ]

    public struct Captured {
        public var files: [Manifest.UnlinkedFile] = []
        public var copiedBytes: UInt64 = 0
        public var reflinkedBytes: UInt64 = 0
        public init() {}
    }

    /// Finds the unlinked files the tasks `pids` hold.
    static func scan(_ pids: [pid_t]) -> [UnlinkedOpenFile] {
        OpenFiles.unlinked(pids: pids) { rootFilesystems.contains($0) }
    }

    /// Captures `files` into `dir` (tasks frozen). `reflink: false` forces
    /// the copy (a test hook).
    static func capture(_ files: [UnlinkedOpenFile], into dir: String, container c: Container, kind: RootKind,
                        reflink: Bool = true) throws -> Captured {
        var out = Captured()
        guard !files.isEmpty else { return out }
        try Sys.mkdir(dir, mode: 0o700)
        let viaOverlay = kind == .overlay && Mounts.isMountPoint(c.rootMount)
        defer { if viaOverlay { try? Sys.rmdir("\(c.rootMount)/\(scratchDir)") } }
        for (i, f) in files.enumerated() {
            let name = "\(i)"
            let across: ((Int32) throws -> Void)? = viaOverlay ? { dst in try cloneThroughOverlay(f.fd, into: dst, c, name: name) } : nil
            let (how, copied) = try FileClone.file(at: "\(dir)/\(name)", from: f.fd, allowReflink: reflink, cloneAcross: across)
            if how == .copied {
                out.copiedBytes += copied
            } else {
                out.reflinkedBytes += f.size
            }
            out.files.append(Manifest.UnlinkedFile(key: f.key, path: f.path, size: f.size, mode: UInt32(f.mode),
                                                   uid: f.uid, gid: f.gid, file: name, captured: how,
                                                   held: f.held, mapped: f.mapped))
        }
        return out
    }

    /// Clones the overlay file `src` into `dst` through a scratch file on the
    /// same overlay: overlay → overlay clones the upper files, and the
    /// scratch's upper file is on the store's filesystem.
    static func cloneThroughOverlay(_ src: Int32, into dst: Int32, _ c: Container, name: String) throws {
        let dir = "\(c.rootMount)/\(scratchDir)"
        try Sys.mkdir(dir, mode: 0o700, existOK: true)
        let scratch = "\(dir)/take-\(name)"
        let o = try Sys.open(scratch, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o600)
        defer {
            Sys.close(o)
            try? Sys.unlink(scratch)
        }
        try Faults.check("take.unlinked-scratch")
        try FileClone.reflink(to: o, from: src, scratch)
        let upper = "\(ContainerRoot.filesDir(volume: c.volume, kind: .overlay))/\(scratchDir)/take-\(name)"
        let real = try Sys.open(upper, O_RDONLY | O_CLOEXEC)
        defer { Sys.close(real) }
        try FileClone.reflink(to: dst, from: real, upper)
    }

    /// Puts snapshot `m`'s unlinked files into the files of `volume` (not
    /// mounted yet) as .crsnap-unlinked/FILE, owned and moded as they were.
    static func place(_ m: Manifest, from snapDir: String, volume: String, kind: RootKind) throws {
        guard let files = m.unlinked, !files.isEmpty else { return }
        let dir = "\(ContainerRoot.filesDir(volume: volume, kind: kind))/\(scratchDir)"
        try Sys.mkdir(dir, mode: 0o700, existOK: true)
        for f in files {
            let saved = "\(snapDir)/unlinked/\(f.file)"
            let src = try Sys.open(saved, O_RDONLY | O_CLOEXEC)
            defer { Sys.close(src) }
            try? Sys.unlink("\(dir)/\(f.file)")
            _ = try FileClone.file(at: "\(dir)/\(f.file)", from: src, mode: mode_t(f.mode), uid: f.uid, gid: f.gid)
        }
    }

    /// The path inside the container a restore puts captured file `file` at.
    static func restorePath(_ file: String) -> String { "/\(scratchDir)/\(file)" }

    /// After the dump: rewrites the CRIU images so that each captured file,
    /// recorded as an external file, is a plain file at its restore path.
    static func relocate(_ files: [Manifest.UnlinkedFile], in imagesDir: String) throws {
        guard !files.isEmpty else { return }
        var paths: [String: String] = [:]
        for f in files { paths[f.key] = restorePath(f.file) }
        try FilesImage.relocateExternal(in: imagesDir, to: paths)
    }

    /// The handler a restore into `root` needs when unlinked files were
    /// placed there (see `place`): it unlinks them at CRIU's post-restore
    /// notification. nil when none were.
    static func postRestore(root: String) -> PostRestore? {
        Sys.exists("\(root)/\(scratchDir)") ? PostRestore { _ in try unlinkPlaced(root: root) } : nil
    }

    /// In the monitor, at CRIU's post-restore notification (tasks restored,
    /// not yet resumed): unlinks the placed files, which the restored tasks
    /// now hold open, and their directory, through the mounted root.
    static func unlinkPlaced(root: String) throws {
        let dir = "\(root)/\(scratchDir)"
        guard Sys.exists(dir) else { return }
        for name in try FileManager.default.contentsOfDirectory(atPath: dir) {
            try Sys.unlink("\(dir)/\(name)")
        }
        try Sys.rmdir(dir)
    }

    /// A scratch directory left in a container's files by a take or restore
    /// cut short: removed (through the mounted root when there is one).
    static func sweep(_ c: Container, kind: RootKind) {
        let root = "\(c.rootMount)/\(scratchDir)"
        if Mounts.isMountPoint(c.rootMount) && Sys.exists(root) {
            try? Sys.removeTree(root)
        } else {
            try? Sys.removeTree("\(ContainerRoot.filesDir(volume: c.volume, kind: kind))/\(scratchDir)")
        }
    }
}
