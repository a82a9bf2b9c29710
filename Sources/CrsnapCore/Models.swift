import FSSnapshot
import Foundation
import ProcessCR

/// How a container was started; written once by `run`.
public struct ContainerConfig: Codable, Equatable {
    public var name: String
    public var kind: RootKind
    public var command: [String]
    public var env: [String]
    public var hostname: String
    public var created: Date
    /// The directory a subvolume root was made from (`--rootfs`), if any.
    public var rootfsSource: String?
}

/// What the monitor says about the running container.
public struct ContainerState: Codable, Equatable {
    public enum Status: String, Codable { case starting, running, stopped }
    public var status: Status
    public var monitorPid: Int32
    public var initPid: Int32
    /// CRIU's name of the pipe the container writes its output to ("pipe:[ino]").
    public var logPipe: String
    public var updated: Date
}

/// A complete snapshot: written last, atomically, only when both halves exist.
public struct Manifest: Codable, Equatable {
    public struct Stats: Codable, Equatable {
        /// CRIU's frozen time (tasks frozen to thawed), including the fs snapshot.
        public var frozen_ms: Double
        public var fs_snapshot_ms: Double
        /// Wall time of the whole CRIU dump request.
        public var dump_ms: Double
        public var images_bytes: UInt64
        /// Hashing the images (after the thaw, outside the freeze).
        public var checksum_ms: Double? = nil
    }

    public var format: Int = 1
    public var id: String
    public var container: String
    public var number: Int
    public var tag: String?
    public var created: Date
    public var kind: RootKind
    public var backend: String
    /// The pipe the images refer to for stdout/stderr; handed back on restore.
    public var log_pipe: String
    /// pids of the tree inside its pid namespace at the frozen instant, by host pid order.
    public var init_pid_ns: Int32
    public var criu_version: String?
    public var stats: Stats
    /// SHA-256 of each CRIU image file (name → hex), checked before a restore.
    public var images_sha256: [String: String]? = nil
}

enum JSON {
    static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        e.dateEncodingStrategy = .iso8601
        return e
    }

    static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }

    static func write<T: Encodable>(_ value: T, to path: String) throws {
        try Sys.writeAtomically(path, Array(try encoder().encode(value)) + [0x0A])
    }

    static func read<T: Decodable>(_ type: T.Type, from path: String) throws -> T {
        let bytes = try Sys.readFile(path)
        do {
            return try decoder().decode(type, from: Data(bytes))
        } catch {
            throw CrsnapError(.failed, "\(path) does not parse: \(error)")
        }
    }
}
