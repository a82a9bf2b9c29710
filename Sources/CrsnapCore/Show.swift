import FSSnapshot
import Foundation
import ProcessCR

/// `crsnap show ID`: what a snapshot captured, read from its manifest.
public enum Show {
    public struct Filesystem: Codable {
        /// Where it is in the container.
        public var mount: String
        /// "overlay upper dir" or "subvolume".
        public var holds: String
        public var snapshot: String
        /// "btrfs snapshot", "reflinked copy" or "copy".
        public var captured: String
        public var read_only: Bool?
    }

    public struct UnlinkedFile: Codable {
        public var path: String
        public var size: UInt64
        /// "reflinked" or "copied".
        public var captured: String
        public var held: Bool
        public var mapped: Bool
    }

    public struct Tmpfs: Codable {
        public var mount: String
        public var captured: String
    }

    public struct VolumeInfo: Codable {
        public var host: String
        public var mount: String
        public var snapshotted: Bool
        public var snapshot: String?
    }

    public struct Description: Codable {
        public var id: String
        public var container: String
        public var tag: String?
        public var type: String
        public var created: Date
        public var stopped: Bool
        /// Files only: no processes (a rollback to it restarts the command).
        public var fs_only: Bool
        public var criu_version: String?
        /// The processes in the CRIU images, parents first (pids inside the
        /// container's pid namespace); empty for a files-only snapshot.
        public var processes: [CheckpointedProcess]
        /// Why the processes could not be read from the images (damaged).
        public var processes_error: String?
        public var filesystems: [Filesystem]
        public var unlinked: [UnlinkedFile]
        public var tmpfs: [Tmpfs]
        public var volumes: [VolumeInfo]
        /// The container's paths kept across rollback (`run --keep`): a
        /// rollback to this snapshot leaves their current contents.
        public var kept: [String]
        /// The container's network (`run --network`): host, none or bridge.
        public var network: String
        /// A bridged container's address (CIDR) and published ports.
        public var address: String?
        public var publish: [String]
        /// The snapshot's files on disk: every data extent, and those no
        /// other snapshot or the live container shares (nil: unknown).
        public var fs_total_bytes: UInt64?
        public var fs_exclusive_bytes: UInt64?
        public var stats: Manifest.Stats
        /// The container now: "running" or "stopped", and why it is stopped
        /// when its processes went without crsnap (see `Container.goneReason`).
        public var container_state: String
        public var container_reason: String?
        /// The clocks of the container's time namespace as the take read
        /// them (seconds): a rollback or resume to this snapshot makes them
        /// carry on from here. Nil for a files-only snapshot.
        public var clocks: TimeNamespaceImage?
        /// The running container's time namespace now: its offsets against
        /// the host's clocks (0 until its first restore). Nil when stopped.
        public var container_clock_offsets: ClockOffsets?
    }

    public struct ClockOffsets: Codable, Equatable {
        public var monotonic: Double
        public var boottime: Double
    }

    public static func describe(store: Store, id: SnapshotID) throws -> Description {
        let c = try Container(store: store, name: id.container)
        try c.mustExist()
        let m = try c.manifest(id.number)
        let dir = c.snapshotDir(id.number)
        let backend = c.store.backend
        let caps = backend.capabilities
        let how = caps.contains(.constantTimeSnapshot) ? "btrfs snapshot" : caps.contains(.cloneCopies) ? "reflinked copy" : "copy"
        let fs = "\(dir)/fs"
        var filesystems = [Filesystem(mount: "/", holds: m.kind == .overlay ? "overlay upper dir" : "subvolume",
                                      snapshot: m.kind == .overlay ? "\(fs)/upper" : fs, captured: how,
                                      read_only: caps.contains(.readOnlySnapshots) ? (try? Btrfs.isReadOnly(fs)) : nil)]
        if m.kind == .overlay { filesystems[0].holds += " (lower: the host's /, read-only)" }
        var processes: [CheckpointedProcess] = [], processesError: String?
        if !m.isFilesOnly {
            do { processes = try ProcessTreeImage.read(imagesDir: "\(dir)/images") } catch { processesError = "\(error)" }
        }
        let live = c.liveness
        let usage = Snapshots.filesystemBytes(c, id.number)
        let volumes = (m.volumes ?? []).map { v in
            VolumeInfo(host: v.host, mount: v.container, snapshotted: v.snapshotted,
                       snapshot: v.snapshotted ? "\(dir)/volumes/\(v.key)" : nil)
        }
        return Description(
            id: m.id, container: m.container, tag: m.tag, type: m.snapshotRole.rawValue, created: m.created,
            stopped: m.stopped ?? false, fs_only: m.isFilesOnly, criu_version: m.criu_version,
            processes: processes, processes_error: processesError, filesystems: filesystems,
            unlinked: (m.unlinked ?? []).map {
                UnlinkedFile(path: $0.path, size: $0.size, captured: $0.captured.rawValue, held: $0.held, mapped: $0.mapped)
            },
            tmpfs: (m.tmpfs ?? []).map { Tmpfs(mount: $0, captured: "contents in the CRIU images") },
            volumes: volumes, kept: (try? c.config().keep ?? []) ?? [],
            network: ((try? c.config().networkMode) ?? .host).rawValue,
            address: (try? c.config().bridgeAddress)??.description, publish: ((try? c.config().publish) ?? nil)?.map(\.description) ?? [],
            fs_total_bytes: usage?.total, fs_exclusive_bytes: usage?.exclusive, stats: m.stats,
            container_state: live.running ? "running" : "stopped", container_reason: live.goneReason,
            clocks: m.isFilesOnly ? nil : try? TimeNamespaceImage.read(imagesDir: "\(dir)/images"),
            container_clock_offsets: live.running ? (c.state()?.initPid).flatMap(Proc.timeNamespaceOffsets)
                .map { ClockOffsets(monotonic: $0.monotonic, boottime: $0.boottime) } : nil)
    }
}
