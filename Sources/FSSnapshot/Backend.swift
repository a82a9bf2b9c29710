import Foundation

/// What a snapshot backend can do, declared instead of tested by name.
public struct BackendCapabilities: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// A snapshot costs O(1), whatever the data size.
    public static let constantTimeSnapshot = BackendCapabilities(rawValue: 1 << 0)
    /// Snapshots can be made read-only.
    public static let readOnlySnapshots = BackendCapabilities(rawValue: 1 << 1)
    /// A copy shares the files' extents (reflink) instead of copying their
    /// bytes: its cost follows the number of files, not their size.
    public static let cloneCopies = BackendCapabilities(rawValue: 1 << 2)
}

/// A filesystem that can hold a container's writable volume and snapshot it.
public protocol SnapshotBackend: Sendable {
    var name: String { get }
    var capabilities: BackendCapabilities { get }
    func createVolume(_ path: String) throws
    func snapshot(_ source: String, to destination: String, readOnly: Bool) throws
    func deleteVolume(_ path: String) throws
    func isVolume(_ path: String) -> Bool
}

public struct BtrfsBackend: SnapshotBackend {
    public init() {}
    public var name: String { "btrfs" }
    public var capabilities: BackendCapabilities { [.constantTimeSnapshot, .readOnlySnapshots] }
    public func createVolume(_ path: String) throws { try Btrfs.createSubvolume(path) }
    public func snapshot(_ source: String, to destination: String, readOnly: Bool) throws {
        try Btrfs.snapshot(source, to: destination, readOnly: readOnly)
    }
    public func deleteVolume(_ path: String) throws {
        if Btrfs.isSubvolume(path) && (try? Btrfs.isReadOnly(path)) == true {
            // A read-only subvolume can be deleted, but one nested inside it cannot
            // be reached; clear the flag first so recursive deletion works.
            try? Btrfs.setReadOnly(path, false)
        }
        try Btrfs.deleteSubvolume(path)
    }
    public func isVolume(_ path: String) -> Bool { Btrfs.isSubvolume(path) }
}

public struct UnsupportedFilesystem: Error, CustomStringConvertible {
    public let path: String
    public let magic: UInt
    public var description: String {
        "\(path) is not on btrfs (filesystem magic 0x\(String(magic, radix: 16))); crsnap keeps container volumes on btrfs"
    }
}

public enum SnapshotBackends {
    /// The backend for the filesystem that holds `path`.
    public static func forPath(_ path: String) throws -> SnapshotBackend {
        let magic = try Sys.filesystemType(path)
        switch magic {
        case Btrfs.superMagic: return BtrfsBackend()
        default: throw UnsupportedFilesystem(path: path, magic: magic)
        }
    }
}
