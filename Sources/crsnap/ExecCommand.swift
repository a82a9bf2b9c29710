import ArgumentParser
import CrsnapCore

struct ExecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec",
        abstract: "Run a command inside a running container's namespaces.",
        discussion: """
        The command joins the container's mount, pid, uts, ipc, network and
        time namespaces (so it reads the container's CLOCK_MONOTONIC and
        CLOCK_BOOTTIME, which carry on from a snapshot after a rollback). It
        gets this terminal's stdin, stdout and stderr; crsnap exits with its
        status. To attach a debugger from the host instead: crsnap top.
        """
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
