import Foundation

/// Volumes as plain directories on a filesystem without subvolumes (ext4,
/// xfs). A snapshot is a copy — with reflinks where the filesystem has them
/// (xfs with reflink=1), else the bytes — so it costs time proportional to
/// the container's writable files (their number with reflinks, their size
/// without), inside the freeze. `crsnap doctor` and `take --json`
/// (copied_bytes, reflinked_bytes) say so.
public struct CopyBackend: SnapshotBackend {
    /// The filesystem clones files (found by `probeReflink` when the store
    /// was made).
    public let reflinks: Bool

    public init(reflinks: Bool) { self.reflinks = reflinks }
    public var name: String { "copy" }
    public var capabilities: BackendCapabilities { reflinks ? [.cloneCopies] : [] }

    /// Whether files in `dir` can be cloned (`cp --reflink=always` of a small
    /// probe file succeeds); the probe files are removed.
    public static func probeReflink(in dir: String) -> Bool {
        let probe = "\(dir)/.crsnap-reflink-probe"
        defer {
            try? Sys.unlink(probe)
            try? Sys.unlink(probe + ".clone")
        }
        do {
            try Sys.writeAtomically(probe, [UInt8](repeating: 0x63, count: 4096))
            try Program.run(["cp", "--reflink=always", "--", probe, probe + ".clone"])
            return true
        } catch {
            return false
        }
    }

    public func createVolume(_ path: String) throws {
        try Sys.mkdir(path, mode: 0o755)
    }

    public func snapshot(_ source: String, to destination: String, readOnly: Bool) throws {
        guard !Sys.exists(destination) else { throw SystemError("snapshot to", destination, errno: EEXIST) }
        do {
            try Program.run(["cp", "-a", "--reflink=auto", "--", source, destination])
        } catch {
            try? Sys.removeTree(destination)
            throw error
        }
    }

    public func deleteVolume(_ path: String) throws {
        try Sys.removeTree(path)
    }

    public func isVolume(_ path: String) -> Bool {
        Sys.isDirectory(path)
    }
}
