import Foundation

/// Volumes as plain directories on a filesystem without subvolumes (ext4,
/// xfs). A snapshot is a copy — with reflinks where the filesystem has them
/// (xfs with reflink=1), else the bytes — so it costs time proportional to
/// the container's writable files, inside the freeze. `crsnap doctor` and
/// `take --json` (copied_bytes) say so.
public struct CopyBackend: SnapshotBackend {
    public init() {}
    public var name: String { "copy" }
    public var capabilities: BackendCapabilities { [] }

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
