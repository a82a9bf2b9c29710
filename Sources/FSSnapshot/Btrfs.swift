import CLibmount
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A libbtrfsutil call that failed, with the errno it left behind.
public struct BtrfsError: Error, CustomStringConvertible {
    public let operation: String
    public let path: String
    public let code: btrfs_util_error
    public let errno: Int32

    public var description: String {
        let what = String(cString: btrfs_util_strerror(code))
        let sys = errno != 0 ? " (\(String(cString: strerror(errno))))" : ""
        return "btrfs \(operation) \(path): \(what)\(sys)"
    }
}

/// Subvolume primitives over libbtrfsutil.
public enum Btrfs {
    public static let superMagic: UInt = 0x9123_683E

    static func call(_ op: String, _ path: String, _ body: () -> btrfs_util_error) throws {
        Glibc.errno = 0
        let r = body()
        if r != BTRFS_UTIL_OK {
            throw BtrfsError(operation: op, path: path, code: r, errno: Glibc.errno)
        }
    }

    public static func isBtrfs(_ path: String) -> Bool {
        (try? Sys.filesystemType(path)) == superMagic
    }

    public static func isSubvolume(_ path: String) -> Bool {
        btrfs_util_is_subvolume(path) == BTRFS_UTIL_OK
    }

    public static func createSubvolume(_ path: String) throws {
        try call("create subvolume", path) { btrfs_util_create_subvolume(path, 0, nil, nil) }
    }

    /// A snapshot of `source` at `destination`; read-only when asked.
    public static func snapshot(_ source: String, to destination: String, readOnly: Bool) throws {
        let flags = readOnly ? Int32(BTRFS_UTIL_CREATE_SNAPSHOT_READ_ONLY) : 0
        try call("snapshot", "\(source) to \(destination)") {
            btrfs_util_create_snapshot(source, destination, flags, nil, nil)
        }
    }

    /// Deletes a subvolume and any subvolumes below it.
    public static func deleteSubvolume(_ path: String) throws {
        try call("delete subvolume", path) {
            btrfs_util_delete_subvolume(path, Int32(BTRFS_UTIL_DELETE_SUBVOLUME_RECURSIVE))
        }
    }

    public static func isReadOnly(_ path: String) throws -> Bool {
        var ro = false
        try call("get read-only", path) { btrfs_util_get_subvolume_read_only(path, &ro) }
        return ro
    }

    public static func setReadOnly(_ path: String, _ readOnly: Bool) throws {
        try call("set read-only", path) { btrfs_util_set_subvolume_read_only(path, readOnly) }
    }

    /// Who a subvolume is, for send and receive: its own uuid, the uuid of
    /// the subvolume it is a snapshot of, and the uuid of the subvolume it
    /// was received from (nil when not received). A send's parent is found
    /// on the receiving side by that received uuid.
    public struct Identity: Equatable, Sendable {
        public var uuid: String
        public var parentUUID: String?
        public var receivedUUID: String?

        /// What a send stream names it by, and so what a receiver records
        /// as the received uuid: the received uuid of a subvolume that was
        /// itself received, else its own.
        public var acrossStores: String { receivedUUID ?? uuid }
    }

    public static func identity(_ path: String) throws -> Identity {
        var info = btrfs_util_subvolume_info()
        try call("subvolume info", path) { btrfs_util_subvolume_info(path, 0, &info) }
        func text<T>(_ tuple: T) -> String? {
            let bytes = withUnsafeBytes(of: tuple) { Array($0) }
            guard bytes.contains(where: { $0 != 0 }) else { return nil }
            let hex = bytes.map { String(format: "%02x", $0) }.joined()
            let parts = [0..<8, 8..<12, 12..<16, 16..<20, 20..<32].map { r in
                String(hex[hex.index(hex.startIndex, offsetBy: r.lowerBound)..<hex.index(hex.startIndex, offsetBy: r.upperBound)])
            }
            return parts.joined(separator: "-")
        }
        return Identity(uuid: text(info.uuid) ?? "", parentUUID: text(info.parent_uuid), receivedUUID: text(info.received_uuid))
    }
}
