import ContainerNetwork
import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

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
    /// Paths inside the container mounted as tmpfs (`--tmpfs`); CRIU dumps
    /// and restores their contents with the processes.
    public var tmpfs: [String]?
    /// Host directories bind-mounted into the container (`--volume`).
    public var volumes: [Volume]?
    /// Paths inside the root whose contents at the time of a rollback
    /// replace the snapshot's (`--keep`, e.g. /var/log): outside the one
    /// instant by design.
    public var keep: [String]?
    /// The command's user and group (`run --user`); nil: root.
    public var user: UserSpec?
    /// `run --network`; nil (containers from before the option): host.
    public var network: NetworkMode? = nil
    /// A bridged container's address, "10.87.0.2/24": its lease, held while
    /// the container exists (`run --address`, else the lowest free one).
    public var address: String? = nil
    /// Host ports forwarded to a bridged container (`run --publish`).
    public var publish: [PortMapping]? = nil
    /// Which container this is, across stores: a random id made by `run`
    /// and carried by export and import (nil in containers from before it).
    public var id: String? = nil

    /// Whether `other` is this same container (made by the same `run`).
    func isSameContainer(as other: ContainerConfig) -> Bool {
        if let a = id, let b = other.id { return a == b }
        return created == other.created && command == other.command
    }

    public var networkMode: NetworkMode { network ?? .host }

    /// The bridged container's address, parsed.
    public var bridgeAddress: IPv4Network? { networkMode == .bridge ? address.flatMap(IPv4Network.init) : nil }
}

/// How a container reaches the network (`run --network`).
public enum NetworkMode: String, Codable, CaseIterable, Sendable {
    /// The host's network namespace, shared.
    case host
    /// A network namespace of its own with the loopback device only.
    case none
    /// A network namespace of its own joined to the host's bridge (`crsnap0`)
    /// by a veth pair: an address of the store's subnet, a default route via
    /// the bridge, outbound NAT, published ports.
    case bridge

    /// Whether the container has a network namespace of its own, which CRIU
    /// then checkpoints and restores with the processes.
    public var ownNamespace: Bool { self != .host }

    public init(parsing text: String) throws {
        guard let m = NetworkMode(rawValue: text) else {
            throw CrsnapError(.usage, "invalid --network \"\(text)\": expected \(NetworkMode.allCases.map(\.rawValue).joined(separator: " or "))")
        }
        self = m
    }
}

/// `run --user UID[:GID]`: numeric ids; the group is the user's number when
/// not given. The command runs with no supplementary groups.
public struct UserSpec: Codable, Equatable, Sendable {
    public var uid: UInt32
    public var gid: UInt32

    public init(parsing text: String) throws {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        func id(_ s: Substring) -> UInt32? {
            guard !s.isEmpty, s.allSatisfy({ $0 >= "0" && $0 <= "9" }) else { return nil }
            return UInt32(s).flatMap { $0 == UInt32.max ? nil : $0 }
        }
        guard parts.count <= 2, let uid = id(parts[0]), let gid = parts.count == 2 ? id(parts[1]) : uid else {
            throw CrsnapError(.usage, "invalid --user \"\(text)\": expected UID or UID:GID, numbers below 4294967295")
        }
        self.uid = uid
        self.gid = gid
    }

    public var description: String { "\(uid):\(gid)" }
}

/// A host directory bind-mounted into a container. CRIU sees it as an
/// external mount (`key`). Its contents are rolled back only when it is a
/// btrfs subvolume on the store's filesystem: then it is snapshotted in the
/// same frozen instant as everything else.
public struct Volume: Codable, Equatable {
    public var host: String
    public var container: String
    public var key: String
    public var snapshotted: Bool
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
    /// Who the monitor and the init are: the pids with their start times,
    /// the boot and the pid namespace (absent in states older than that).
    public var monitorID: ProcessIdentity? = nil
    public var initID: ProcessIdentity? = nil
    /// How the container's init last ended on its own or by `crsnap stop`
    /// (not when crsnap stopped it to checkpoint it); nil before.
    public var lastExit: LastExit? = nil
    /// How many times a reboot system call inside restarted it since it was started.
    public var restarts: Int? = nil

    public var monitor: ProcessIdentity { monitorID ?? ProcessIdentity(pid: monitorPid, start: nil, boot: nil, pidNamespace: nil) }
    public var initProcess: ProcessIdentity { initID ?? ProcessIdentity(pid: initPid, start: nil, boot: nil, pidNamespace: nil) }
}

/// How a container's init ended. A reboot system call in a pid namespace other than
/// the first ends its init as if killed by SIGHUP (restart) or SIGINT
/// (power-off, halt): the kernel's word to the parent, read as LXC does.
public struct LastExit: Codable, Equatable, Sendable {
    public enum Reason: String, Codable, Sendable {
        /// It exited (`status`).
        case exited
        /// A signal ended it (`signal`).
        case killed
        /// A reboot system call with power-off or halt inside: it stays stopped.
        case poweroff
        /// A reboot system call with restart inside: its command was started again.
        case reboot
        /// Restarts asked for too often: stopped instead of restarted.
        case rebootLoop = "reboot-loop"
        /// `crsnap stop` (or `rm --force`).
        case stopped
    }

    public var reason: Reason
    public var status: Int32? = nil
    public var signal: Int32? = nil
    public var at: Date

    /// From a wait status (not for `stopped`).
    public init(waitStatus status: Int32, at: Date = Date()) {
        let sig = status & 0x7f
        self.at = at
        if sig == 0 {
            reason = .exited
            self.status = (status >> 8) & 0xff
        } else if sig == SIGHUP {
            reason = .reboot
        } else if sig == SIGINT {
            reason = .poweroff
        } else {
            reason = .killed
            signal = sig
        }
    }

    public init(reason: Reason, at: Date = Date()) {
        self.reason = reason
        self.at = at
    }

    /// For `ps`'s table: "exit 0", "signal 9", "poweroff", "reboot", ...
    public var short: String {
        switch reason {
        case .exited: return "exit \(status ?? 0)"
        case .killed: return "signal \(signal ?? 0)"
        default: return reason.rawValue
        }
    }

    /// For the log: what happened, in words.
    public var sentence: String {
        switch reason {
        case .exited: return "container init exited with status \(status ?? 0)"
        case .killed: return "container init was killed by signal \(signal ?? 0)"
        case .poweroff: return "powered off from inside (a reboot system call with power-off or halt; or its init was killed by SIGINT): stopped"
        case .reboot: return "rebooted from inside (a reboot system call with restart; or its init was killed by SIGHUP)"
        case .rebootLoop: return "rebooted from inside again"
        case .stopped: return "container stopped"
        }
    }
}

/// Why a snapshot was taken.
public enum SnapshotRole: String, Codable, Sendable, CaseIterable {
    /// `crsnap take`.
    case single
    /// Before a change (`guard`, `take --pre`); a `post` may pair with it.
    case pre
    /// After a change that succeeded; `pair` names its `pre`.
    case post
    /// Taken by `rollback` just before it replaced the state, so it can be undone.
    case preRollback = "pre-rollback"
}

/// A complete snapshot: written last, atomically, only when both halves exist.
public struct Manifest: Codable, Equatable {
    public struct Stats: Codable, Equatable {
        /// CRIU's frozen time (tasks seized to resumed), including the fs snapshot.
        public var frozen_ms: Double
        public var fs_snapshot_ms: Double
        /// Wall time of the whole CRIU dump request.
        public var dump_ms: Double
        public var images_bytes: UInt64
        /// Bytes copied inside the freeze because the store cannot snapshot
        /// (a copy store); absent on btrfs.
        public var copied_bytes: UInt64?
        /// Bytes of the copy that were cloned (reflink), not copied: a copy
        /// store on a filesystem that clones files; absent elsewhere.
        public var reflinked_bytes: UInt64? = nil
        /// Hashing the images (after the thaw, outside the freeze).
        public var checksum_ms: Double? = nil
        /// Total size of the unlinked open files captured beside the images.
        public var unlinked_bytes: UInt64? = nil
        /// crsnap's freeze: request to every task frozen.
        public var freezing_ms: Double? = nil
        /// Freeze request to thaw: how long the container's tasks stood
        /// still, what a client of the service waits at most. Absent in
        /// snapshots taken before crsnap froze containers itself.
        public var pause_ms: Double? = nil
        /// Copying the images from the memory they were staged in into the
        /// store, after the thaw; absent when CRIU wrote them to the store.
        public var staging_copy_ms: Double? = nil
        /// The preflight before the freeze (`TakePreflight`): reading the
        /// tasks' files and sockets from /proc.
        public var preflight_ms: Double? = nil
    }

    /// An open file whose last name was gone at the frozen instant (unlinked
    /// or O_TMPFILE), captured as unlinked/FILE and handed back to CRIU on
    /// restore as the external file `key`.
    public struct UnlinkedFile: Codable, Equatable {
        /// CRIU's external id, "file[MNT_ID:INODE]".
        public var key: String
        /// The path it had.
        public var path: String
        public var size: UInt64
        public var mode: UInt32
        public var uid: UInt32
        public var gid: UInt32
        /// The copy's name under the snapshot's unlinked/ directory.
        public var file: String
        /// How its bytes were captured: reflinked (shared extents) or copied.
        public var captured: FileClone.How
        /// Held as an fd, mapped, or both.
        public var held: Bool
        public var mapped: Bool
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
    /// nil in manifests from before roles existed: read as `.single`.
    public var role: SnapshotRole?
    /// For a `post`: the number of its `pre`.
    public var pair: Int?
    /// The tasks were stopped by this take (`take --stop`, rollback's own snapshot).
    public var stopped: Bool?
    /// Its TCP connections were not saved: they ended with the tasks (a
    /// migrate's stop, `TakeOptions.closeConnections`), and every restore
    /// brings them back closed.
    public var tcp_closed: Bool?
    /// The container's volumes at the time; `snapshotted` ones are in volumes/KEY.
    public var volumes: [Volume]?

    /// Unlinked open files captured with the snapshot (in unlinked/).
    public var unlinked: [UnlinkedFile]? = nil
    /// tmpfs mounts of the container; CRIU keeps their contents in the images.
    public var tmpfs: [String]? = nil
    /// A files-only snapshot (`take --fs-only`, or `--fallback fs-only` after
    /// a failed checkpoint): no CRIU images; a rollback to it starts the
    /// container's command afresh on its files.
    public var fs_only: Bool? = nil

    public var snapshotRole: SnapshotRole { role ?? .single }
    public var isFilesOnly: Bool { fs_only ?? false }
    /// SHA-256 of each CRIU image file (name → hex), checked before a restore.
    public var images_sha256: [String: String]? = nil
    /// Where an imported or received snapshot came from; nil for one taken here.
    public var received: Received? = nil

    /// An imported or received snapshot's origin (`crsnap import`).
    public struct Received: Codable, Equatable, Sendable {
        /// Its id in the store it was exported from, and that store's id.
        public var snapshot: String
        public var store: String
        /// The identity of its filesystem half across stores: the uuid the
        /// received subvolume records as its received uuid (btrfs).
        public var uuid: String?
        public var at: Date
    }
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

/// Milliseconds from `t` until now (monotonic): the figures in stats.
func milliseconds(since t: DispatchTime) -> Double {
    Double(DispatchTime.now().uptimeNanoseconds - t.uptimeNanoseconds) / 1e6
}
