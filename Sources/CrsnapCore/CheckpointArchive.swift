import FSSnapshot
import Foundation
import ProcessCR
import SnapshotArchive
#if canImport(Glibc)
import Glibc
#endif

/// `crsnap export --format checkpoint-archive`: a snapshot in the layout
/// Podman, CRI-O and the kubelet give a container checkpoint, which
/// checkpointctl (`show`, `inspect`) and those engines' tools read:
///
///   config.dump       the container: id, name, runtime, created and
///                     checkpointed times (checkpointctl's ContainerConfig)
///   spec.dump         an OCI runtime spec: the command, the root, the
///                     mounts, and annotations naming crsnap, CRIU's
///                     version, the host's architecture, kernel and cgroups
///   checkpoint/       CRIU's images as the dump wrote them (dump.log
///                     and stats-dump among them)
///   stats-dump        CRIU's dump statistics, where checkpointctl reads them
///   rootfs-diff.tar   the container's own files: an overlay root's upper
///                     dir (whiteouts left out), a subvolume root whole
///   deleted.files     JSON list of the paths the container deleted from
///                     the overlay's lower layer
///   crsnap/manifest.json, crsnap/config.json
///                     crsnap's own account, for a person reading it
///
/// One-way: crsnap's `import` reads its own archives, not this layout. The
/// annotations that make CRI-O or containerd restore an archive
/// (`io.kubernetes.cri-o.annotations.checkpoint.name`,
/// `org.criu.checkpoint.container.name`) are not set.
enum CheckpointArchive {
    /// checkpointctl's `ContainerConfig` (lib/metadata.go): field names are
    /// its JSON keys.
    struct ConfigDump: Codable, Equatable {
        var id: String
        var name: String
        var rootfsImageName: String
        var runtime: String
        var createdTime: Date
        var checkpointedTime: Date
    }

    /// The parts of an OCI runtime spec (config.json) that crsnap knows.
    struct SpecDump: Codable, Equatable {
        struct User: Codable, Equatable { var uid: UInt32; var gid: UInt32 }
        struct Process: Codable, Equatable {
            var user: User
            var args: [String]
            var env: [String]
            var cwd: String
        }
        struct Root: Codable, Equatable { var path: String; var readonly: Bool }
        struct Mount: Codable, Equatable {
            var destination: String
            var type: String
            var source: String
            var options: [String]?
        }
        var ociVersion = "1.0.2"
        var process: Process
        var root: Root
        var hostname: String
        var mounts: [Mount]
        var annotations: [String: String]
    }

    static let statsDump = "stats-dump"
    /// What CRIU writes into the images directory on restore: not part of
    /// the checkpoint.
    static let restoreOutputs: Set<String> = ["restore.log", "stats-restore", "lazy-pages.log"]

    static func annotations(_ c: Container, _ config: ContainerConfig, _ m: Manifest) -> [String: String] {
        var u = utsname()
        uname(&u)
        func field<T>(_ v: T) -> String { withUnsafeBytes(of: v) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) } }
        var a = ["io.container.manager": "crsnap",
                 "org.criu.checkpoint.engine.name": "crsnap",
                 "org.criu.checkpoint.host.arch": field(u.machine),
                 "org.criu.checkpoint.host.kernel": field(u.release),
                 "org.criu.checkpoint.cgroup.version": (try? c.cgroup().version).map { "v\($0)" } ?? "unknown",
                 "io.crsnap.container.name": c.name,
                 "io.crsnap.snapshot.id": m.id,
                 "io.crsnap.network": config.networkMode.rawValue]
        if let v = m.criu_version { a["org.criu.checkpoint.criu.version"] = v }
        if let tag = m.tag { a["io.crsnap.snapshot.tag"] = tag }
        return a
    }

    static func spec(_ c: Container, _ config: ContainerConfig, _ m: Manifest) -> SpecDump {
        var mounts = [SpecDump.Mount(destination: "/", type: m.kind == .overlay ? "overlay" : "btrfs",
                                     source: m.kind == .overlay ? "overlay" : (config.rootfsSource ?? c.volume), options: nil)]
        mounts += (m.tmpfs ?? []).map { SpecDump.Mount(destination: $0, type: "tmpfs", source: "tmpfs", options: nil) }
        mounts += (m.volumes ?? []).map { SpecDump.Mount(destination: $0.container, type: "bind", source: $0.host, options: ["rbind"]) }
        return SpecDump(process: .init(user: .init(uid: config.user?.uid ?? 0, gid: config.user?.gid ?? 0),
                                       args: config.command, env: config.env, cwd: "/"),
                        root: .init(path: c.rootMount, readonly: false), hostname: config.hostname,
                        mounts: mounts, annotations: annotations(c, config, m))
    }

    /// The container's own files as a planned tar (see `DirectoryTar`), and
    /// the paths it deleted from the overlay's lower layer: its whiteouts.
    /// A directory that replaces the lower one whole (opaque: crsnap makes
    /// /tmp and /dev so) is in the tar with what it holds; what it hides of
    /// the lower layer is not listed.
    static func rootfsDiff(root: String, kind: RootKind) throws -> (tar: DirectoryTar, deleted: [String]) {
        var deleted: [String] = []
        let tar = try DirectoryTar(root: root) { rel, st in
            // CRIU's link_remap.N files are in a snapshot only because it was
            // taken inside the dump: not the container's files.
            if (rel.split(separator: "/").last ?? "").hasPrefix("link_remap.") { return false }
            guard kind == .overlay else { return true }
            if st.st_mode & S_IFMT == S_IFCHR && st.st_rdev == 0 {
                deleted.append("/" + rel)
                return false
            }
            return true
        }
        return (tar, deleted.sorted())
    }

    /// Snapshot `n` of `c` (whose lock the caller holds), verified, in the
    /// checkpoint-archive layout into `out`.
    static func write(_ c: Container, _ n: Int, into out: FileSink, compress: Bool) throws -> TransferResult {
        let started = DispatchTime.now()
        let id = SnapshotID(container: c.name, number: n)
        let (m, config) = try Transfer.exportable(c, n, processes: true)
        let dir = c.snapshotDir(n)
        let diff = try rootfsDiff(root: m.kind == .overlay ? "\(dir)/fs/upper" : "\(dir)/fs", kind: m.kind)
        let tar = TarWriter(compress ? try ZstdSink(out) : out)
        let mtime = UInt64(Date().timeIntervalSince1970)
        func add(_ name: String, _ data: [UInt8]) throws {
            try tar.add(Tar.Header(name: name, size: UInt64(data.count), mode: 0o600, mtime: mtime), data: data)
        }
        // checkpointctl looks for a directory's own entry (checkpoint/).
        func addDirectory(_ name: String) throws {
            try tar.add(Tar.Header(name: name + "/", size: 0, mode: 0o700, mtime: mtime, kind: .directory))
        }
        func json<T: Encodable>(_ value: T) throws -> [UInt8] {
            let e = JSON.encoder()
            e.outputFormatting.insert(.withoutEscapingSlashes)
            return Array(try e.encode(value)) + [0x0A]
        }
        var result = TransferResult(id: id.description, from: nil, file: nil, compressed: compress, bytes: 0, archive_bytes: 0,
                                    fs_bytes: diff.tar.size, parent: nil, images_bytes: 0, unlinked_bytes: 0,
                                    created_container: nil, ms: 0)
        try add("config.dump", try json(ConfigDump(id: config.id ?? c.name, name: c.name,
                                                              rootfsImageName: m.kind == .overlay ? "/" : (config.rootfsSource ?? ""),
                                                              runtime: "crsnap", createdTime: config.created,
                                                              checkpointedTime: m.created)))
        try add("spec.dump", try json(spec(c, config, m)))
        let images = "\(dir)/images"
        try addDirectory("checkpoint")
        for name in Transfer.regularFiles(images) where !restoreOutputs.contains(name) {
            result.images_bytes += try tar.add(name: "checkpoint/\(name)", file: "\(images)/\(name)", mtime: mtime)
        }
        if Sys.exists("\(images)/\(statsDump)") { try tar.add(name: statsDump, file: "\(images)/\(statsDump)", mtime: mtime) }
        try tar.add(Tar.Header(name: "rootfs-diff.tar", size: diff.tar.size, mode: 0o600, mtime: mtime)) { sink in
            try diff.tar.write(into: sink)
        }
        try add("deleted.files", try json(diff.deleted))
        try addDirectory("crsnap")
        try add("crsnap/manifest.json", try json(m))
        try add("crsnap/config.json", try json(config))
        try tar.finish()
        result.bytes = out.bytes
        result.archive_bytes = tar.bytes
        result.ms = milliseconds(since: started)
        return result
    }
}
