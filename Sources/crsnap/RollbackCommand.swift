import ArgumentParser
import CrsnapCore

struct RollbackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback",
        abstract: "Roll a container's files and processes back to a snapshot.",
        discussion: """
        Stops the container's processes, replaces its writable volume with a
        writable clone of the snapshot's, and restores the processes with CRIU,
        so memory and disk agree again. The replaced volume is kept until the
        restore has succeeded; if anything fails it is put back.
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Argument(help: "Snapshot id, NAME@N.") var id: String

    func run() throws {
        try reporting {
            let sid = try SnapshotID(parsing: id)
            _ = try Rollback.rollback(store: try storeOptions.openExisting(), id: sid)
        }
    }
}
