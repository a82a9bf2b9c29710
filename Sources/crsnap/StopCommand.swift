import ArgumentParser
import CrsnapCore

struct StopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop", abstract: "Stop a container's processes (SIGKILL to the tree); its files and snapshots stay.")

    @OptionGroup var storeOptions: StoreOptions
    @Argument(help: "Container name.") var name: String

    func run() throws {
        try reporting {
            try Names.validate(name)
            try Lifecycle.stop(store: try storeOptions.openExisting(), name: name)
        }
    }
}

struct RmCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm", abstract: "Remove a stopped container, its files and all its snapshots.")

    @OptionGroup var storeOptions: StoreOptions
    @Flag(help: "Stop the container first if it is running.") var force = false
    @Argument(help: "Container name.") var name: String

    func run() throws {
        try reporting {
            try Names.validate(name)
            try Lifecycle.remove(store: try storeOptions.openExisting(), name: name, force: force)
        }
    }
}

struct DeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Delete a snapshot (its number is never reused).")

    @OptionGroup var storeOptions: StoreOptions
    @Argument(help: "Snapshot id, NAME@N.") var id: String

    func run() throws {
        try reporting {
            let sid = try SnapshotID(parsing: id)
            try Snapshots.delete(store: try storeOptions.openExisting(), id: sid)
        }
    }
}
