import ArgumentParser
import CrsnapCore
import Foundation

struct TakeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "take",
        abstract: "Checkpoint a container's processes and snapshot its files at one instant.",
        discussion: """
        crsnap flushes the container's files, freezes its freezer cgroup and
        waits until every task is frozen (--freeze-timeout; past it the tasks
        are thawed and nothing is added), then CRIU seizes and dumps them; while
        they stand still (CRIU's post-dump notification) crsnap snapshots the
        writable volume, so memory and files are from the same instant, and
        thaws the tasks as soon as CRIU is done. The pause a client of the
        service sees is `pause_ms` in --json and PAUSE(ms) in `crsnap list`.
        Most of a large container's pause is CRIU copying its memory into the
        images: by default (--stage auto) they are written to a tmpfs of their
        own when the machine has the memory to spare, and copied into the
        store after the thaw (the snapshot is listed only once it is complete). Open
        files whose last name is gone (unlinked, O_TMPFILE) are cloned into the
        snapshot in the same instant, whatever their size, and copied only
        where the filesystem cannot clone (`copied_bytes`); `crsnap show`
        lists them. The container keeps running. Prints the new snapshot id (NAME@N) alone on
        stdout; phase timings go to stderr when it is a terminal. On failure no
        snapshot is listed and the container runs on. A retention policy saved
        with `crsnap prune NAME --save` is applied after each take. A file lock
        the container holds on a file that a process outside it also locks (a
        volume, a host path) is named in a warning: the outside side is not
        part of the snapshot. What CRIU would fail on (crsnap doctor NAME) is
        refused before anything is frozen.

        --fs-only takes the files alone: the tasks are frozen for the
        filesystem snapshot only, CRIU takes no part (list shows TYPE
        fs-only). --fallback fs-only does that when the checkpoint fails,
        saying why on stderr (`fallback_reason` in --json). A rollback to a
        files-only snapshot puts its files back and starts the container's
        command afresh (rollback --yes in scripts).
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Option(help: "A tag to remember the snapshot by (same rules as names).") var tag: String?
    @Flag(help: "Checkpoint and stop: the processes are gone once the snapshot is complete (crsnap resume brings them back).")
    var stop = false
    @Flag(help: "Mark the snapshot as the pre half of a pre/post pair.") var pre = false
    @Option(help: ArgumentHelp("Mark the snapshot as the post half paired with this pre snapshot.", valueName: "NAME@N"))
    var post: String?
    @Option(help: ArgumentHelp("Seconds the tasks may take to freeze before the take gives up (thawed, nothing added).", valueName: "SECONDS"))
    var freezeTimeout: Double = TakeOptions.defaultFreezeTimeout
    @Option(help: ArgumentHelp("Where CRIU writes the images while the tasks are frozen: memory (a tmpfs; copied into the store after the thaw, which makes the pause of a large container about half as long), store, or auto: memory when the machine has the images' size to spare beside 1 GiB or a tenth of its RAM, else the store.", valueName: "auto|memory|store"))
    var stage: ImageStaging.Mode = .auto
    @Flag(help: "Snapshot the files only, no processes (no CRIU; frozen for the filesystem snapshot alone).")
    var fsOnly = false
    @Option(help: ArgumentHelp("What to take when the checkpoint fails: fs-only (the files alone, saying so). Default: nothing.", valueName: "fs-only"))
    var fallback: String?
    @Flag(help: "Print JSON: id, fs_only, fallback_reason, container, tag, created, stats (pause_ms: freeze request to thaw, what a client waits; freezing_ms: freeze request to all tasks frozen; frozen_ms: CRIU's seize to resume; fs_snapshot_ms, dump_ms, images_bytes; staging_copy_ms when the images were staged in memory; preflight_ms, the checks before the freeze (crsnap doctor NAME); unlinked_bytes, copied_bytes, reflinked_bytes where they apply), criu (CRIU's own figures), warnings (e.g. file locks shared with processes outside the container, TCP connections to peers outside it).")
    var json = false
    @Argument(help: "Container name.") var name: String

    func run() throws {
        try reporting {
            try Names.validate(name)
            if let tag { try Names.validate(tag, what: "tag") }
            var o = TakeOptions(tag: tag, role: pre ? .pre : .single, stop: stop, freezeTimeout: freezeTimeout)
            o.stage = stage
            o.filesOnly = fsOnly
            if let fallback {
                guard fallback == "fs-only" else {
                    throw CrsnapError(.usage, "invalid --fallback \"\(fallback)\": the only fallback is fs-only")
                }
                guard !fsOnly else { throw CrsnapError(.usage, "--fallback fs-only is for a checkpoint; --fs-only takes none") }
                o.fallbackFilesOnly = true
            }
            if stop && (fsOnly || fallback != nil) {
                throw CrsnapError(.usage, "--stop keeps the processes in the snapshot; a files-only snapshot holds none (use crsnap stop after the take)")
            }
            if let post {
                guard !pre else { throw CrsnapError(.usage, "--pre and --post exclude each other") }
                let sid = try SnapshotID(parsing: post)
                guard sid.container == name else {
                    throw CrsnapError(.usage, "--post \(post): the pre snapshot must be of container \(name)")
                }
                o.role = .post
                o.pair = sid.number
            }
            let r = try Take.take(store: try storeOptions.openExisting(), name: name, o)
            Progress.note(String(format: "%@: paused %.0f ms (freezing %.1f ms, frozen %.0f ms, fs snapshot %.1f ms), dump %.0f ms, images %@",
                                 r.id, r.stats.pause_ms ?? r.stats.frozen_ms, r.stats.freezing_ms ?? 0, r.stats.frozen_ms,
                                 r.stats.fs_snapshot_ms, r.stats.dump_ms, formatBytes(r.stats.images_bytes)))
            for w in r.warnings ?? [] { FileHandle.standardError.write(Data("crsnap: warning: \(w)\n".utf8)) }
            if json { try printJSON(r) } else { print(r.id) }
        }
    }
}

extension ImageStaging.Mode: ExpressibleByArgument {}
