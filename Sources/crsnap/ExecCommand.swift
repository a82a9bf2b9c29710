import ArgumentParser
import CrsnapCore

struct ExecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec",
        abstract: "Run a command inside a running container's namespaces.",
        discussion: "The command gets this terminal's stdin, stdout and stderr; crsnap exits with its status."
    )

    @OptionGroup var storeOptions: StoreOptions
    @Argument(help: "Container name.") var name: String
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

    func run() throws {
        let status = try reporting { () -> Int32 in
            try Names.validate(name)
            return try Lifecycle.exec(store: try storeOptions.openExisting(), name: name, command: command)
        }
        if status != 0 { throw ExitCode(status) }
    }
}
