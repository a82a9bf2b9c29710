import ContainerNetwork
import FSSnapshot
import Foundation
import SnapshotArchive
#if canImport(Glibc)
import Glibc
#endif

/// The first entry of a crsnap archive (crsnap-archive.json): what it holds.
///
/// An archive is a tar stream (zstd-compressed or not) of, in this order:
///   crsnap-archive.json      this header
///   config.json              how the container was started
///   manifest.json            the snapshot's manifest
///   images/NAME              CRIU's images (none in a files-only snapshot)
///   unlinked/NAME            the unlinked open files captured with it
///   fs.btrfs.000000, ...     the filesystem half from a btrfs store: a btrfs
///                            send stream, in chunks (with a parent: only what
///                            changed since it)
///   fs.tar                   or from a copy store: the snapshot's tree as tar
///                            (owners, modes, devices, extended attributes)
///   SHA256SUMS               the SHA-256 of every entry above
struct ArchiveHeader: Codable, Equatable {
    static let entryName = "crsnap-archive.json"
    static let fsStream = "fs.btrfs"
    static let fsTar = "fs.tar"
    /// The values of `filesystem`.
    static let btrfsSend = "btrfs-send", tar = "tar"

    var format: Int
    /// What kind of archive: "snapshot" (one snapshot, whole).
    var kind: String
    /// The snapshot's id where it was exported, and that store's id.
    var snapshot: String
    var container: String
    var number: Int
    var store: String
    var exported: Date
    /// How the filesystem half travels: "btrfs-send" or "tar".
    var filesystem: String
    /// Its identity across stores: the uuid a receiver records as the
    /// received subvolume's received uuid.
    var uuid: String?
    /// An incremental archive (`crsnap send --parent`): the snapshot its
    /// filesystem stream is relative to, which the receiving store must hold.
    var parent: Parent? = nil

    struct Parent: Codable, Equatable {
        var snapshot: String
        var uuid: String
    }
}

/// The layouts `export` writes.
public enum ArchiveFormat: String, CaseIterable, Sendable {
    /// crsnap's own: both halves and their checksums, what `import` reads.
    case crsnap
    /// The layout of Podman's, CRI-O's and the kubelet's checkpoint archives,
    /// which checkpointctl reads (`CheckpointArchive`); export only.
    case checkpointArchive = "checkpoint-archive"

    public init(parsing text: String) throws {
        guard let f = ArchiveFormat(rawValue: text) else {
            throw CrsnapError(.usage, "invalid --format \"\(text)\": expected \(ArchiveFormat.allCases.map(\.rawValue).joined(separator: " or "))")
        }
        self = f
    }
}

/// What `export` and `import` did, for the summary line and `--json`.
public struct TransferResult: Codable, Equatable {
    /// The snapshot: exported from here, or imported as.
    public var id: String
    /// import: the id it had in the store it came from.
    public var from: String?
    /// export: the file written (nil: stdout); import: the file read (nil: stdin).
    public var file: String?
    public var compressed: Bool
    /// Bytes of the archive as written or read (compressed, when it is).
    public var bytes: UInt64
    /// Bytes of the uncompressed tar stream.
    public var archive_bytes: UInt64
    /// Bytes of the filesystem half's stream (btrfs send; with a parent,
    /// what changed since it).
    public var fs_bytes: UInt64
    /// An incremental archive: the snapshot it is relative to (its id where
    /// it was sent from).
    public var parent: String? = nil
    public var images_bytes: UInt64
    public var unlinked_bytes: UInt64
    /// import: the container was made by this import (it was not in the store).
    public var created_container: Bool?
    public var ms: Double
}

/// Moving snapshots between stores: `crsnap export` and `crsnap import`.
public enum Transfer {
    /// Writes snapshot `id` as one archive to `path` (nil: standard output).
    /// The file appears complete or not at all (written beside it under a
    /// temporary name, renamed at the end). Holds the container's lock, so
    /// a take or rollback of it waits until the export is done.
    /// With `parent` (a snapshot of the same container that the receiving
    /// store holds too) the filesystem half is only what changed since it:
    /// `crsnap send --parent`.
    public static func export(store: Store, id: SnapshotID, parent: SnapshotID? = nil, to path: String?,
                              compress: Bool, format: ArchiveFormat = .crsnap) throws -> TransferResult {
        let started = DispatchTime.now()
        if parent != nil && !(store.backend is BtrfsBackend) {
            throw CrsnapError(.usage, "--parent needs a btrfs store: store \(store.path) keeps plain directories (a copy store), whose snapshots travel whole (send without --parent); nothing was written")
        }
        if parent != nil && format != .crsnap {
            throw CrsnapError(.usage, "--parent needs crsnap's own format: a \(format.rawValue) holds the whole snapshot; nothing was written")
        }
        if let path {
            guard !path.isEmpty, !path.contains("\0") else { throw CrsnapError(.usage, "invalid output file \"\(path)\"") }
            if Sys.exists(path) { throw CrsnapError(.conflict, "\(path) exists; export does not overwrite (remove it, or choose another name); nothing was written") }
            let dir = (path as NSString).deletingLastPathComponent
            if !dir.isEmpty && !Sys.isDirectory(dir) { throw CrsnapError(.usage, "invalid output file \(path): \(dir) is not a directory") }
        } else if isatty(1) == 1 {
            throw CrsnapError(.usage, "refusing to write an archive to a terminal: give -o FILE, or redirect standard output")
        }
        signal(SIGPIPE, SIG_IGN)
        return try Container.locked(store: store, name: id.container) { c in
            // The output: a temporary file beside the target, or stdout.
            var fd: Int32 = 1
            var partial: String?
            if let path {
                let d = (path as NSString).deletingLastPathComponent
                let p = (d.isEmpty ? "" : d + "/") + ".\((path as NSString).lastPathComponent).partial-\(getpid())"
                fd = try Sys.open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o600)
                partial = p
            }
            defer {
                if partial != nil { Sys.close(fd) }
                if let partial { try? Sys.unlink(partial) }
            }
            let meter = TransferMeter(path == nil ? "sending \(id)" : "exporting \(id)")
            defer { meter?.finish() }
            let sink = FileSink(fd: fd, name: path ?? "standard output", meter: meter)
            var result = format == .crsnap ? try write(c, id.number, parent: parent, into: sink, compress: compress)
                : try CheckpointArchive.write(c, id.number, into: sink, compress: compress)
            if let path, let p = partial {
                try Sys.fsync(fd, p)
                try Sys.rename(p, path)
                partial = nil
            }
            result.file = path
            result.ms = milliseconds(since: started)
            return result
        }
    }

    /// Snapshot `n` of `c` (whose lock the caller holds), verified (unless
    /// the caller took it itself just now), as an archive into `out`;
    /// incremental on `parent`.
    static func write(_ c: Container, _ n: Int, parent: SnapshotID?, into out: FileSink, compress: Bool,
                      verify: Bool = true) throws -> TransferResult {
        let started = DispatchTime.now()
        let store = c.store
        let id = SnapshotID(container: c.name, number: n)
        let (m, config) = try exportable(c, n, verify: verify)
        let dir = c.snapshotDir(n)
        let fs = "\(dir)/fs"
        // A copy store's snapshots are plain directories: they travel as tar.
        let btrfs = store.backend is BtrfsBackend
        var header = ArchiveHeader(format: 1, kind: "snapshot", snapshot: id.description, container: c.name, number: n,
                                   store: store.id, exported: Date(), filesystem: btrfs ? ArchiveHeader.btrfsSend : ArchiveHeader.tar,
                                   uuid: btrfs ? (try? Btrfs.identity(fs)).map(\.acrossStores) : nil)
        var parentFS: String?
        var parentImages: (dir: String, sums: [String: String])?
        if let parent {
            guard parent.container == id.container else {
                throw CrsnapError(.usage, "invalid --parent \(parent): a parent is a snapshot of the same container (\(id.container)@N)")
            }
            guard parent.number != n else { throw CrsnapError(.usage, "invalid --parent \(parent): it is the snapshot being sent") }
            let pm = try c.manifest(parent.number)
            parentImages = ("\(c.snapshotDir(parent.number))/images", pm.images_sha256 ?? [:])
            let pfs = "\(c.snapshotDir(parent.number))/fs"
            guard store.backend.isVolume(pfs), let identity = try? Btrfs.identity(pfs) else {
                throw CrsnapError(.failed, "snapshot \(parent) is damaged: its filesystem snapshot \(pfs) is missing; nothing was written")
            }
            header.parent = ArchiveHeader.Parent(snapshot: parent.description, uuid: identity.acrossStores)
            parentFS = pfs
        }
        let writer = ArchiveWriter(compress ? try ZstdSink(out) : out)
        var result = TransferResult(id: id.description, from: nil, file: nil, compressed: compress, bytes: 0, archive_bytes: 0,
                                    fs_bytes: 0, parent: parent?.description, images_bytes: 0, unlinked_bytes: 0,
                                    created_container: nil, ms: 0)
        try writer.add(name: ArchiveHeader.entryName, data: try encode(header))
        try writer.add(name: "config.json", data: try encode(config))
        try writer.add(name: "manifest.json", data: try encode(m))
        for name in regularFiles("\(dir)/images") {
            let path = "\(dir)/images/\(name)"
            // Incremental: an image that differs little from the parent's of
            // the same name travels as the blocks that changed.
            if let p = parentImages, Sys.exists("\(p.dir)/\(name)"),
               let plan = try? BlockDelta.plan(target: path, base: "\(p.dir)/\(name)"),
               plan.encodedSize < plan.size / 4 * 3 {
                try writer.add(name: "images/\(name)\(deltaSuffix)", size: plan.encodedSize) { sink in
                    try BlockDelta.write(plan, target: path, baseSHA256: p.sums[name], into: sink)
                }
                result.images_bytes += plan.encodedSize
            } else {
                result.images_bytes += try writer.add(name: "images/\(name)", file: path)
            }
        }
        for name in regularFiles("\(dir)/unlinked") {
            result.unlinked_bytes += try writer.add(name: "unlinked/\(name)", file: "\(dir)/unlinked/\(name)")
        }
        if btrfs {
            let send = try BtrfsStream.send(fs, parent: parentFS)
            do {
                result.fs_bytes = try writer.add(stream: ArchiveHeader.fsStream, from: FileSource(fd: send.fd, name: "btrfs send")).bytes
                try send.finish()
            } catch {
                send.abort()
                let said = send.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
                throw CrsnapError(.failed, "export of \(id) failed: \(error)" + (said.isEmpty ? "" : " (btrfs send: \(said))"))
            }
        } else {
            guard store.backend.isVolume(fs) else {
                throw CrsnapError(.failed, "snapshot \(id) is damaged: its filesystem snapshot \(fs) is missing; nothing was written")
            }
            let tree = try DirectoryTar(root: fs, withRoot: true, xattrs: true)
            try writer.add(name: ArchiveHeader.fsTar, size: tree.size) { try tree.write(into: $0) }
            result.fs_bytes = tree.size
        }
        try writer.finish()
        result.bytes = out.bytes
        result.archive_bytes = writer.bytes
        result.ms = milliseconds(since: started)
        return result
    }

    /// Snapshot `n`'s manifest and its container's config, checked for an
    /// export: with `processes`, not a files-only snapshot; verified (unless
    /// the caller took it itself just now); no volumes.
    static func exportable(_ c: Container, _ n: Int, processes: Bool = false, verify: Bool = true) throws -> (Manifest, ContainerConfig) {
        let id = SnapshotID(container: c.name, number: n)
        let m = try c.manifest(n)
        if processes && m.isFilesOnly {
            throw CrsnapError(.usage, "\(id) is a files-only snapshot: it holds no checkpoint of processes, which a checkpoint archive is; nothing was written")
        }
        if verify { try Verify.require(c, n, doing: "export of \(id)") }
        let config = try c.config()
        if !(config.volumes ?? []).isEmpty {
            throw CrsnapError(.usage, "\(id): container \"\(c.name)\" has volumes (--volume), which an archive does not carry yet; nothing was written")
        }
        return (m, config)
    }

    /// Reads one archive from `path` (nil: standard input) into the store,
    /// as container `name` (nil: the name it had). Nothing is listed until
    /// every byte was checked against SHA256SUMS and the filesystem half was
    /// received: an interrupted or damaged import leaves no snapshot and no
    /// container behind (what it wrote is in containers/.import-*, removed by
    /// the next import). A container of that name in the store must be the
    /// same container (made by the same `run`, or imported from it); the
    /// snapshot is added to it under the number it had.
    public static func importArchive(store: Store, from path: String?, as name: String?) throws -> TransferResult {
        let started = DispatchTime.now()
        if let name { try Names.validate(name) }
        let btrfs = store.backend is BtrfsBackend
        var inFD: Int32 = 0
        if let path {
            guard Sys.exists(path) else { throw CrsnapError(.notFound, "no file \(path)") }
            inFD = try Sys.open(path, O_RDONLY | O_CLOEXEC)
        } else if isatty(0) == 1 {
            throw CrsnapError(.usage, "refusing to read an archive from a terminal: give FILE, or redirect standard input")
        }
        defer { if path != nil { Sys.close(inFD) } }
        signal(SIGPIPE, SIG_IGN)
        sweepImports(store)
        let meter = TransferMeter(path == nil ? "receiving" : "importing \(path!)")
        defer { meter?.finish() }
        let input = FileSource(fd: inFD, name: path ?? "standard input", meter: meter)
        let what = path ?? "standard input"
        func damaged(_ e: Error) -> CrsnapError {
            CrsnapError(.failed, "import of \(what) refused: \(e); nothing was changed")
        }

        let (source, compressed) = try Archive.open(input)
        let reader = ArchiveReader(source)
        let header: ArchiveHeader
        let first: Tar.Header?
        do { first = try reader.next() } catch { throw damaged(error) }
        // Another kind of archive is named as such, not read to its end for
        // a checksum list it does not have.
        guard let h = first, h.name == ArchiveHeader.entryName else {
            throw damaged(Malformed("its first entry is not \(ArchiveHeader.entryName): not a crsnap archive"
                                    + (first?.name == "config.dump" ? " (a checkpoint archive, as export --format checkpoint-archive and Podman write, which import does not read)" : "")))
        }
        do {
            header = try decode(ArchiveHeader.self, try reader.readAll(limit: 1 << 20), h.name)
            guard header.format == 1, header.kind == "snapshot" else {
                throw Malformed("it is a \(header.kind) archive of format \(header.format); this crsnap reads snapshot archives of format 1")
            }
            guard header.filesystem == ArchiveHeader.btrfsSend || header.filesystem == ArchiveHeader.tar else {
                throw Malformed("its filesystem half is \"\(header.filesystem)\"; this crsnap reads btrfs send streams and tar")
            }
            guard header.filesystem == ArchiveHeader.btrfsSend || header.parent == nil else {
                throw Malformed("its filesystem half is a tar, which is never incremental, yet it names a parent")
            }
        } catch let e as Malformed {
            throw damaged(drain(reader, e))
        } catch let e as ArchiveError {
            throw damaged(e)
        }
        if header.filesystem == ArchiveHeader.btrfsSend && !btrfs {
            throw CrsnapError(.usage, "\(what) holds \(header.snapshot)'s files as a btrfs send stream, which store \(store.path) cannot receive: it keeps plain directories (a copy store); import it into a btrfs store; nothing was changed")
        }
        let target = name ?? header.container
        try Names.validate(target)
        let c = try Container(store: store, name: target)
        let n = header.number

        // Everything is written into a staging directory no listing looks
        // at, locked while this import runs.
        let stage = try Staging(store: store)
        defer { stage.remove() }
        let snap = "\(stage.dir)/snapshot"
        try Sys.mkdir(snap, mode: 0o700)
        try Sys.mkdir("\(snap)/images", mode: 0o700)
        try Sys.mkdir("\(snap)/unlinked", mode: 0o700)

        // An existing container stays locked from the first check to the
        // rename that lists the snapshot.
        var lock: FileLock? = nil
        if c.exists {
            lock = try c.lock()
            try Recovery.finishInterrupted(c)
        }
        defer { lock?.release() }

        var result = TransferResult(id: "\(target)@\(n)", from: header.snapshot, file: path, compressed: compressed, bytes: 0,
                                    archive_bytes: 0, fs_bytes: 0, parent: nil, images_bytes: 0, unlinked_bytes: 0,
                                    created_container: nil, ms: 0)
        // An incremental archive needs its parent here, in this container.
        var localParent: (number: Int, sums: [String: String])?
        if let p = header.parent {
            guard c.exists, let local = c.snapshotNumbers().first(where: { Snapshots.identity(c, $0) == p.uuid }) else {
                throw CrsnapError(.notFound, "\(what) is incremental on \(p.snapshot), which container \"\(target)\" in store \(store.path) does not hold (send it first, or send without --parent); nothing was changed")
            }
            result.parent = "\(target)@\(local)"
            localParent = (local, (try? c.manifest(local))?.images_sha256 ?? [:])
        }
        var config: ContainerConfig?
        var manifest: Manifest?
        var receive: PipedProgram?
        var receiveFailed: Error?
        var nextChunk = 0
        var unpacked = false
        defer { receive?.abort() }
        do {
            while let h = try reader.next() {
                if h.name == "config.json" {
                    config = try decode(ContainerConfig.self, try reader.readAll(limit: 1 << 20), h.name)
                    if let existing = try? c.config(), !existing.isSameContainer(as: config!) {
                        throw CrsnapError(.conflict, "store \(store.path) has another container named \"\(target)\" (not made by the same run); import it under another name with --as NAME; nothing was changed")
                    }
                } else if h.name == "manifest.json" {
                    let m = try decode(Manifest.self, try reader.readAll(limit: 16 << 20), h.name)
                    guard m.container == header.container, m.number == n else {
                        throw Malformed("manifest.json names \(m.id), the header \(header.snapshot)")
                    }
                    if c.exists && Sys.exists(c.snapshotDir(n)) {
                        throw CrsnapError(.conflict, "container \"\(target)\" already has a snapshot \(target)@\(n) in store \(store.path); import under another name with --as NAME; nothing was changed")
                    }
                    manifest = m
                } else if let (sub, file) = split(h.name), sub == "images", file.hasSuffix(deltaSuffix) {
                    // The image rebuilt from the parent's here and the blocks
                    // that changed, checked against the hash take recorded.
                    let name = String(file.dropLast(deltaSuffix.count))
                    guard let local = localParent, let m = manifest else {
                        throw Malformed("\(h.name) is a block delta, in an archive \(localParent == nil ? "without a parent" : "before its manifest.json")")
                    }
                    let base = "\(c.snapshotDir(local.number))/images/\(name)"
                    let fd = try Sys.open("\(snap)/images/\(name)", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                                          mode: h.mode & 0o777 == 0 ? 0o600 : mode_t(h.mode & 0o777))
                    defer { Sys.close(fd) }
                    let out = HashingSink(FileSink(fd: fd, name: "\(snap)/images/\(name)"))
                    do {
                        try BlockDelta.apply(from: reader, base: base, expectBaseSHA256: local.sums[name], into: out)
                    } catch let e as ArchiveError {
                        throw Malformed("images/\(name): \(e.message)")
                    }
                    if let want = m.images_sha256?[name], try out.hash.hex() != want {
                        throw Malformed("images/\(name) rebuilt from \(target)@\(local.number) does not match the hash its snapshot recorded")
                    }
                    result.images_bytes += h.size
                } else if let (sub, file) = split(h.name), sub == "images" || sub == "unlinked" {
                    try copyEntry(reader, to: "\(snap)/\(sub)/\(file)", mode: mode_t(h.mode & 0o777))
                    if sub == "images" { result.images_bytes += h.size } else { result.unlinked_bytes += h.size }
                } else if let chunk = Archive.parseChunk(h.name), chunk.base == ArchiveHeader.fsStream,
                          header.filesystem == ArchiveHeader.btrfsSend {
                    guard chunk.index == nextChunk else { throw Malformed("\(h.name) comes where chunk \(nextChunk) belongs") }
                    nextChunk += 1
                    if chunk.index == 1 { try Faults.check("import.receiving") }
                    if receive == nil && receiveFailed == nil {
                        guard config != nil, manifest != nil else { throw Malformed("\(h.name) comes before config.json and manifest.json") }
                        receive = try BtrfsStream.receive(into: snap)
                    }
                    // A receive that failed is not fed any more; the rest of
                    // the archive is still read, to name a damaged entry.
                    if receiveFailed == nil, let r = receive {
                        do { try reader.copy(to: FileSink(fd: r.fd, name: "btrfs receive")) } catch { receiveFailed = error }
                    }
                    result.fs_bytes += h.size
                } else if h.name == ArchiveHeader.fsTar, header.filesystem == ArchiveHeader.tar {
                    // A copy store's tree: unpacked into a new volume (a
                    // subvolume on btrfs, made read-only as a snapshot is).
                    guard config != nil, manifest != nil else { throw Malformed("\(h.name) comes before config.json and manifest.json") }
                    try store.backend.createVolume("\(snap)/fs")
                    let tree = TarReader(reader, tree: true)
                    do {
                        try DirectoryTar.unpack(tree, into: "\(snap)/fs")
                        try tree.drain()
                    } catch let e as ArchiveError {
                        throw Malformed("\(h.name): \(e.message)")
                    } catch let e as SystemError {
                        throw Malformed("\(h.name): \(e)")
                    }
                    if btrfs { try Btrfs.setReadOnly("\(snap)/fs", true) }
                    unpacked = true
                    result.fs_bytes += h.size
                } else {
                    throw Malformed("it holds \(h.name), which a crsnap snapshot archive does not: not a crsnap archive (or one from a newer crsnap)")
                }
            }
        } catch let e as Malformed {
            throw damaged(drain(reader, e))
        } catch let e as ArchiveError {
            throw damaged(e)
        }
        // Every entry matched SHA256SUMS.
        guard let config, let manifest else { throw damaged(ArchiveError("it lacks config.json or manifest.json")) }
        if header.filesystem == ArchiveHeader.tar {
            guard unpacked else { throw damaged(ArchiveError("it lacks the filesystem tree \(ArchiveHeader.fsTar)")) }
        } else {
            guard let receive else { throw damaged(ArchiveError("it lacks the filesystem stream \(ArchiveHeader.fsStream).000000")) }
            do {
                if let receiveFailed { throw receiveFailed }
                try receive.finish()
            } catch {
                let said = receive.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
                throw CrsnapError(.failed, "import of \(what) failed: btrfs receive: \(said.isEmpty ? "\(error)" : said); nothing was changed")
            }
            guard store.backend.isVolume("\(snap)/fs") else {
                throw CrsnapError(.failed, "import of \(what) failed: btrfs receive made no subvolume \(snap)/fs; nothing was changed")
            }
        }
        try Faults.check("import.received")

        // The snapshot under its new name, with where it came from.
        var m = manifest
        m.id = "\(target)@\(n)"
        m.container = target
        m.received = Manifest.Received(snapshot: header.snapshot, store: header.store,
                                       uuid: btrfs ? (try? Btrfs.identity("\(snap)/fs"))?.receivedUUID ?? header.uuid : header.uuid, at: Date())
        try JSON.write(m, to: "\(snap)/manifest.json")
        result.archive_bytes = reader.offset
        result.bytes = input.bytes

        if c.exists {
            try Faults.check("import.listing")
            try Sys.mkdir(c.snapshotsDir, mode: 0o700, existOK: true)
            try Sys.rename(snap, c.snapshotDir(n))
            try Sys.fsyncDirectory(c.snapshotsDir)
            try advanceNextID(c, past: n)
            result.created_container = false
        } else {
            try makeContainer(stage, c, config, snapshot: n)
            result.created_container = true
        }
        result.ms = milliseconds(since: started)
        return result
    }

    /// A new container in the staging directory around the received
    /// snapshot, renamed into place at the end: its writable volume a
    /// clone of the snapshot, stopped (`crsnap resume` starts it from it).
    static func makeContainer(_ stage: Staging, _ c: Container, _ imported: ContainerConfig, snapshot n: Int) throws {
        let store = c.store
        var config = imported
        config.name = c.name
        if config.hostname == imported.name { config.hostname = c.name }
        let dir = stage.dir
        try store.backend.snapshot("\(dir)/snapshot/fs", to: "\(dir)/fs", readOnly: false)
        try Sys.mkdir("\(dir)/root", mode: 0o755)
        try Sys.mkdir("\(dir)/snapshots", mode: 0o700)
        try Sys.rename("\(dir)/snapshot", "\(dir)/snapshots/\(n)")
        try Sys.writeAtomically("\(dir)/next-id", Array("\(n + 1)\n".utf8))
        // A bridged container keeps its address and published ports when
        // this store can give them; the lease is written under the lock.
        let netLock = config.networkMode == .bridge ? try store.networkLock() : nil
        defer { netLock?.release() }
        if netLock != nil {
            let address = config.bridgeAddress.map { Bridge.dotted($0.address) }
            do {
                config.address = try Networks.lease(store: store, requested: address, publish: config.publish ?? []).description
            } catch let e as CrsnapError {
                throw CrsnapError(.conflict, "container \"\(c.name)\" is bridged at \(config.address ?? "?") with \((config.publish ?? []).map(\.description)); in store \(store.path): \(e.message.replacingOccurrences(of: "invalid --address ", with: "")); nothing was changed")
            }
        }
        try JSON.write(config, to: "\(dir)/config.json")
        try Faults.check("import.listing")
        do {
            try Sys.rename(dir, c.dir)
        } catch let e as SystemError where e.errno == EEXIST || e.errno == ENOTEMPTY {
            throw CrsnapError(.conflict, "container \"\(c.name)\" appeared in store \(store.path) while importing; nothing was changed")
        }
        stage.moved(to: c.dir)
        try Sys.fsyncDirectory(store.containersDir)
    }

    static func advanceNextID(_ c: Container, past n: Int) throws {
        if c.nextNumber() <= n { try Sys.writeAtomically(c.nextIDPath, Array("\(n + 1)\n".utf8)) }
    }

    // MARK: staging

    /// containers/.import-XXXXXXXX: where an import writes, flocked through
    /// containers/.import-XXXXXXXX.lock while it runs (taken before the
    /// directory exists), so that `sweepImports` removes only what no
    /// running import holds.
    final class Staging {
        let store: Store
        let dir: String
        let lockPath: String
        let lock: FileLock
        var movedTo: String?

        init(store: Store) throws {
            self.store = store
            let tag = String(format: "%08x", UInt32.random(in: 0...UInt32.max))
            dir = "\(store.containersDir)/.import-\(tag)"
            lockPath = dir + ".lock"
            lock = try FileLock(path: lockPath)
            try Sys.mkdir(dir, mode: 0o700)
        }

        func moved(to path: String) { movedTo = path }

        func remove() {
            if movedTo == nil { try? Transfer.removeStaging(store, dir) }
            try? Sys.unlink(lockPath)
            lock.release()
        }
    }

    static func removeStaging(_ store: Store, _ dir: String) throws {
        guard Sys.exists(dir) else { return }
        if Sys.isDirectory("\(dir)/snapshot") { try Snapshots.removeSnapshotDir(store.backend, "\(dir)/snapshot") }
        for n in (try? FileManager.default.contentsOfDirectory(atPath: "\(dir)/snapshots")) ?? [] {
            try Snapshots.removeSnapshotDir(store.backend, "\(dir)/snapshots/\(n)")
        }
        if store.backend.isVolume("\(dir)/fs") { try store.backend.deleteVolume("\(dir)/fs") }
        try Sys.removeTree(dir)
    }

    /// Staging directories of imports that no longer run (killed, or the
    /// machine went down): what an interrupted import left.
    public static func leftoverImports(_ store: Store) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: store.containersDir)) ?? []
        return names.filter { $0.hasPrefix(".import-") && !$0.hasSuffix(".lock") }.sorted().compactMap { name in
            let dir = "\(store.containersDir)/\(name)"
            // The lock file is made before the directory and removed after it.
            let fd = open(dir + ".lock", O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { return errno == ENOENT ? dir : nil }
            defer { close(fd) }
            return flock(fd, LOCK_EX | LOCK_NB) == 0 ? dir : nil  // else a running import holds it
        }
    }

    /// Removes what interrupted imports left; what was removed.
    @discardableResult
    public static func sweepImports(_ store: Store) -> [String] {
        leftoverImports(store).compactMap { dir in
            // Taken again: an import that started since must not lose its directory.
            guard let lock = try? FileLock(path: dir + ".lock", wait: false) else { return nil }
            defer { lock.release() }
            guard (try? removeStaging(store, dir)) != nil else { return nil }
            try? Sys.unlink(dir + ".lock")
            return dir
        }
    }

    // MARK: helpers

    /// An entry that checked out as bytes but does not make sense as a
    /// snapshot (it does not parse, or is not where it belongs).
    struct Malformed: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    /// What to say about `e`, found in the middle of the archive: when the
    /// rest of it shows an entry damaged (not matching SHA256SUMS, or the
    /// archive cut short), that is the cause; else `e` itself.
    static func drain(_ reader: ArchiveReader, _ e: Error) -> Error {
        do {
            while try reader.next() != nil {}
        } catch {
            return error
        }
        return e
    }

    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        Array(try JSON.encoder().encode(value)) + [0x0A]
    }

    static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], _ name: String) throws -> T {
        do {
            return try JSON.decoder().decode(type, from: Data(bytes))
        } catch {
            throw Malformed("\(name) does not parse: \(error)")
        }
    }

    /// "images/NAME" → ("images", "NAME") when NAME is one plain file name.
    /// An image sent as a `BlockDelta` against the parent's of the same name.
    static let deltaSuffix = ".crsnap-delta"

    static func split(_ entry: String) -> (String, String)? {
        let parts = entry.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return nil }
        let file = String(parts[1])
        guard !file.isEmpty, !file.hasPrefix("."), file.utf8.count <= 255, !file.contains("\0") else { return nil }
        return (String(parts[0]), file)
    }

    static func regularFiles(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { name in
            !name.hasPrefix(".") && (try? Sys.fileStatus("\(dir)/\(name)")).map { ($0.st_mode & S_IFMT) == S_IFREG } == true
        }.sorted()
    }

    static func copyEntry(_ reader: ArchiveReader, to path: String, mode: mode_t) throws {
        let fd = try Sys.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode: mode == 0 ? 0o600 : mode)
        defer { Sys.close(fd) }
        try reader.copy(to: FileSink(fd: fd, name: path))
    }
}
