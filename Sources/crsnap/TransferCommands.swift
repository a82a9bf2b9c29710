import ArgumentParser
import CrsnapCore
import Foundation

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a snapshot, both halves, as one archive.",
        discussion: """
        The archive is a tar stream: crsnap-archive.json (what it holds),
        config.json (how the container was started), manifest.json, CRIU's
        images under images/, the unlinked open files captured with the
        snapshot under unlinked/, the filesystem half — from a btrfs store a
        btrfs send stream cut into fs.btrfs.000000, fs.btrfs.000001, ...,
        from a copy store the snapshot's tree as one tar, fs.tar (owners,
        modes, devices, extended attributes) — and last SHA256SUMS,
        the SHA-256 of every entry (after `tar xf`, `sha256sum -c SHA256SUMS`
        checks it by hand). --compress zstd makes it one zstd frame
        (`zstd -d` reads it); import tells the two apart by itself.

        The snapshot is verified first (as before a rollback). -o FILE
        appears complete or not at all: it is written beside FILE under a
        temporary name and renamed at the end; an existing FILE is not
        overwritten. -o - writes to standard output (not a terminal).
        take and rollback of the container wait while the export runs.
        Containers with --volume cannot be exported yet.

        --format checkpoint-archive writes the layout of the checkpoint
        archives of Podman, CRI-O and the kubelet instead, which
        checkpointctl reads (show, inspect --ps-tree, --stats, --mounts,
        --metadata): config.dump and spec.dump (the container; annotations
        name crsnap, CRIU's version, the host's architecture, kernel and
        cgroup version), checkpoint/ (CRIU's images as the dump wrote them),
        stats-dump, rootfs-diff.tar (the container's own files: an overlay
        root's upper dir, a subvolume root whole) and deleted.files (what it
        deleted from the overlay's lower layer, as JSON), and crsnap/ with
        the snapshot's manifest and the container's config. It works on
        any store; import does not read it, and the unlinked open files
        captured with the snapshot are not in it. checkpointctl shows the
        engine as containerd, its name for an engine it does not know.
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Option(name: .shortAndLong, help: ArgumentHelp("The archive to write, or - for standard output.", valueName: "file"))
    var output: String
    @Option(help: ArgumentHelp("zstd or none (default none).", valueName: "how")) var compress: String = "none"
    @Option(help: ArgumentHelp("crsnap (default: what import reads) or checkpoint-archive (what checkpointctl reads).", valueName: "layout"))
    var format: String = "crsnap"
    @Flag(help: "Print JSON: id, file, compressed, bytes, archive_bytes, fs_bytes (with checkpoint-archive: of rootfs-diff.tar), images_bytes, unlinked_bytes, ms.") var json = false
    @Argument(help: "Snapshot id, NAME@N.") var id: String

    func run() throws {
        try reporting {
            let sid = try SnapshotID(parsing: id)
            try checkCompress(compress)
            let layout = try ArchiveFormat(parsing: format)
            guard !output.isEmpty else { throw CrsnapError(.usage, "invalid -o \"\": give a file, or - for standard output") }
            if output == "-" && json { throw CrsnapError(.usage, "--json needs -o FILE: standard output carries the archive") }
            let store = try storeOptions.openExisting()
            let r = try Transfer.export(store: store, id: sid, to: output == "-" ? nil : output, compress: compress == "zstd",
                                        format: layout)
            if json {
                try printJSON(r)
            } else {
                // The summary goes to stderr when stdout is the archive.
                let line = "exported \(r.id) to \(r.file ?? "standard output"): \(sizes(r))"
                if r.file == nil { FileHandle.standardError.write(Data((line + "\n").utf8)) } else { print(line) }
            }
        }
    }
}

struct ImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Add a snapshot from an archive (crsnap export) to the store.",
        discussion: """
        Reads the archive (zstd-compressed or not) from FILE, or standard input
        with -, checks every entry against its SHA256SUMS and receives the
        filesystem half with btrfs receive (the snapshot's files arrive
        read-only, as a received subvolume), or unpacks a copy store's tree
        into a new volume (read-only on btrfs). A copy store takes archives
        from copy stores only: a btrfs send stream needs btrfs. Only when all of it is there and
        checked is the snapshot listed: a damaged, cut-short or interrupted
        import lists nothing and names what was wrong (what it had written is
        removed, or by the next import when it was killed).

        The snapshot keeps its number. Without a container of that name in the
        store, import makes one, stopped: `crsnap resume NAME` brings its
        processes back from the snapshot. A container of that name that is the
        same container (made by the same run, or imported from it) gets the
        snapshot beside its own; another one is refused: use --as NAME. A
        bridged container keeps its address and published ports when the
        store can give them, else the import is refused.
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Option(name: .customLong("as"), help: ArgumentHelp("The container's name in this store (default: the one it had).", valueName: "name"))
    var name: String?
    @Flag(help: "Print JSON: id, from, file, compressed, bytes, archive_bytes, fs_bytes, images_bytes, unlinked_bytes, created_container, ms.") var json = false
    @Argument(help: "The archive, or - for standard input.") var file: String

    func run() throws {
        try reporting {
            if let name { try Names.validate(name) }
            guard !file.isEmpty else { throw CrsnapError(.usage, "invalid archive \"\": give a file, or - for standard input") }
            let store = try storeOptions.open()
            let r = try Transfer.importArchive(store: store, from: file == "-" ? nil : file, as: name)
            if json {
                try printJSON(r)
            } else {
                print(imported(r, "imported"))
            }
        }
    }
}

struct SendCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Write a snapshot to standard output, incrementally against a parent the receiver holds.",
        discussion: """
        The same archive as export (see crsnap export --help), to standard
        output, for a pipe: `crsnap send web@5 --parent web@4 | ssh host crsnap
        receive`. With --parent, a snapshot of the same container that the
        receiving store holds too (sent or imported there before), the
        filesystem half is a btrfs send stream with that parent: only the
        extents that changed since it travel, and an image that differs
        little from the parent's of the same name (the memory pages of a
        service whose memory mostly stayed) travels as the 4 KiB blocks that
        changed, rebuilt on the other side from the parent's and checked
        against the hash take recorded. --parent needs a btrfs store: a copy
        store's snapshots travel whole. The size sent is said on standard
        error when it is done (with --json, as JSON there).
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Option(help: ArgumentHelp("A snapshot of the same container, NAME@N, that the receiving store holds: send only what changed since it.", valueName: "id"))
    var parent: String?
    @Option(help: ArgumentHelp("zstd or none (default none).", valueName: "how")) var compress: String = "none"
    @Flag(help: "Say what was sent as JSON on standard error: id, parent, compressed, bytes, archive_bytes, fs_bytes, images_bytes, unlinked_bytes, ms.") var json = false
    @Argument(help: "Snapshot id, NAME@N.") var id: String

    func run() throws {
        try reporting {
            let sid = try SnapshotID(parsing: id)
            let pid = try parent.map { try SnapshotID(parsing: $0) }
            try checkCompress(compress)
            let store = try storeOptions.openExisting()
            let r = try Transfer.export(store: store, id: sid, parent: pid, to: nil, compress: compress == "zstd")
            if json {
                FileHandle.standardError.write(try jsonData(r) + Data("\n".utf8))
            } else {
                FileHandle.standardError.write(Data("sent \(r.id)\(r.parent.map { " (incremental on \($0))" } ?? ""): \(sizes(r))\n".utf8))
            }
        }
    }
}

struct ReceiveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "receive",
        abstract: "Add a snapshot sent by crsnap send (on standard input) to the store.",
        discussion: """
        crsnap import of standard input (see crsnap import --help): every entry
        is checked against its SHA256SUMS before the snapshot is listed, and a
        receive that fails or is killed midway lists nothing. An incremental
        stream (send --parent) needs its parent in the container here (found
        by the uuid its files were received with); without it the receive is
        refused before anything is written. The received files are read-only
        and keep their received uuid, so the next send can be incremental on
        them again.
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Option(name: .customLong("as"), help: ArgumentHelp("The container's name in this store (default: the one it had).", valueName: "name"))
    var name: String?
    @Flag(help: "Print JSON: id, from, parent, compressed, bytes, archive_bytes, fs_bytes, images_bytes, unlinked_bytes, created_container, ms.") var json = false

    func run() throws {
        try reporting {
            if let name { try Names.validate(name) }
            let store = try storeOptions.open()
            let r = try Transfer.importArchive(store: store, from: nil, as: name)
            if json { try printJSON(r) } else { print(imported(r, "received")) }
        }
    }
}

/// "12.0 MiB; files 3.0 MiB, images 9.0 MiB in 0.4 s": what an archive held.
func sizes(_ r: TransferResult) -> String {
    formatBytes(r.bytes) + (r.compressed ? " (zstd, \(formatBytes(r.archive_bytes)) uncompressed)" : "")
        + "; files \(formatBytes(r.fs_bytes))\(r.parent == nil ? "" : " changed")" + ", images \(formatBytes(r.images_bytes))"
        + (r.unlinked_bytes > 0 ? ", unlinked \(formatBytes(r.unlinked_bytes))" : "")
        + String(format: " in %.1f s", r.ms / 1000)
}

func imported(_ r: TransferResult, _ verb: String) -> String {
    "\(verb) \(r.from ?? "?") as \(r.id)" + (r.parent.map { " (incremental on \($0))" } ?? "")
        + (r.created_container == true ? " (new container, stopped: crsnap resume \(r.id.split(separator: "@")[0]))" : "")
        + ": \(sizes(r))"
}

struct MigrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Move a running container to another store or host, with a short stop.",
        discussion: """
        DEST is a store path on this machine, or ssh://[user@]host[:port][/store]
        (the remote default store without /store), where crsnap runs as root
        (--remote-crsnap names it when it is not `crsnap` on the remote PATH;
        --ssh-config passes a configuration file to ssh -F: keys, known hosts).
        ssh runs with BatchMode (no password prompts) and one master connection
        that all of migrate's commands share (no handshake inside the stop).

        Steps: a snapshot while the container runs (tagged migrate), sent as
        crsnap send does — incremental on the newest snapshot of this container
        the destination already holds, else whole; then the short stop: take
        --stop, send what changed since the first snapshot (from a copy store:
        the whole snapshot again), `crsnap resume` there; only when that succeeded is the container removed here (with
        its snapshots). If anything fails before, the container runs here again
        — resumed from its stop snapshot if it had been stopped — and what was
        sent is removed from the destination (the whole container there when
        migrate made it). The downtime, from the stop until it runs there, is
        reported. TCP connections come back closed there (their peers are on
        this side); with a network of its own, those inside the container stay.
        A bridged container keeps its address when the destination's store can
        give it. Containers with --volume cannot migrate yet.
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Option(help: ArgumentHelp("A store path, or ssh://[user@]host[:port][/store].", valueName: "dest")) var to: String
    @Option(help: ArgumentHelp("The crsnap program on the remote host (default: crsnap).", valueName: "path")) var remoteCrsnap: String?
    @Option(help: ArgumentHelp("An ssh client configuration file, passed to ssh -F.", valueName: "file")) var sshConfig: String?
    @Option(help: ArgumentHelp("zstd or none (default none): compress what is sent.", valueName: "how")) var compress: String = "none"
    @Flag(help: "Print JSON: container, destination, first, second, first_parent, first_bytes, first_fs_bytes, second_bytes, second_fs_bytes, downtime_ms (stop_ms + second_send_ms + resume_ms), total_ms, ssh_shared_connection.") var json = false
    @Argument(help: "Container name.") var name: String

    func run() throws {
        try reporting {
            try Names.validate(name)
            try checkCompress(compress)
            if let f = sshConfig, !FileManager.default.isReadableFile(atPath: f) {
                throw CrsnapError(.usage, "invalid --ssh-config \(f): no such readable file")
            }
            let dest = try Destination(parsing: to, remoteCrsnap: remoteCrsnap, sshConfig: sshConfig)
            if case .local = dest.place, remoteCrsnap != nil || sshConfig != nil {
                throw CrsnapError(.usage, "--remote-crsnap and --ssh-config are for an ssh:// destination")
            }
            let store = try storeOptions.openExisting()
            try Container(store: store, name: name).mustExist()
            let r = try Migrate.migrate(store: store, name: name, to: dest, compress: compress == "zstd")
            if json { return try printJSON(r) }
            print("migrated \(r.container) to \(r.destination): downtime \(Int(r.downtime_ms.rounded())) ms; sent \(formatBytes(r.first_bytes))"
                  + " (files \(formatBytes(r.first_fs_bytes))\(r.first_parent.map { " changed since \($0)" } ?? ""))"
                  + " while it ran, then \(formatBytes(r.second_bytes)) (files \(formatBytes(r.second_fs_bytes)) changed)"
                  + String(format: "; %.1f s in all", r.total_ms / 1000))
        }
    }
}

/// `--compress`: zstd or none.
func checkCompress(_ value: String) throws {
    guard value == "zstd" || value == "none" else {
        throw CrsnapError(.usage, "invalid --compress \"\(value)\": expected zstd or none")
    }
}
