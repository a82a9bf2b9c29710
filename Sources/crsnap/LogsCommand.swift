import ArgumentParser
import CrsnapCore
import FSSnapshot
import Foundation

struct LogsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logs",
        abstract: "Print a container's stdout and stderr.",
        discussion: "The log is kept outside the container and is not rolled back; crsnap notes rollbacks in it."
    )

    @OptionGroup var storeOptions: StoreOptions
    @Flag(name: .shortAndLong, help: "Keep printing what the container writes.") var follow = false
    @Argument(help: "Container name.") var name: String

    func run() throws {
        try reporting {
            try Names.validate(name)
            let c = try Container(store: try storeOptions.openExisting(), name: name)
            try c.mustExist()
            guard let fh = FileHandle(forReadingAtPath: c.logPath) else { return }
            while true {
                let data = fh.readDataToEndOfFile()
                if !data.isEmpty { FileHandle.standardOutput.write(data) }
                if !follow || !c.monitorAlive { break }
                usleep(200_000)
            }
        }
    }
}
