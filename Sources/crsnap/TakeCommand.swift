import ArgumentParser
import CrsnapCore
import Foundation

struct TakeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "take",
        abstract: "Checkpoint a container's processes and snapshot its files at one instant.",
        discussion: """
        CRIU freezes the container through its freezer cgroup and dumps it; while
        the tasks are frozen (CRIU's post-dump notification) crsnap snapshots the
        writable volume, so memory and files are from the same instant. The
        container keeps running. Prints the new snapshot id (NAME@N) alone on
        stdout. On failure no snapshot is listed and the container runs on.
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Option(help: "A tag to remember the snapshot by (same rules as names).") var tag: String?
    @Flag(help: "Print JSON: id, container, tag, created, stats (frozen_ms, fs_snapshot_ms, dump_ms, images_bytes).")
    var json = false
    @Argument(help: "Container name.") var name: String

    func run() throws {
        try reporting {
            try Names.validate(name)
            if let tag { try Names.validate(tag, what: "tag") }
            let r = try Take.take(store: try storeOptions.openExisting(), name: name, tag: tag)
            if json { try printJSON(r) } else { print(r.id) }
        }
    }
}
