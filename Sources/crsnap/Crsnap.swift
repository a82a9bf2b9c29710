import ArgumentParser
import CrsnapCore
import Foundation

@main
struct Crsnap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crsnap",
        abstract: "Snapshot a running container's processes and files at one instant; roll both back together.",
        discussion: """
        crsnap runs a command as a small container (own mount, pid, uts and ipc
        namespaces, a writable root on btrfs, a freezer cgroup), checkpoints its
        processes with CRIU while snapshotting its files in the same frozen
        instant, and rolls both back so that memory and disk agree.

        The store is --store, $CRSNAP_STORE, or /var/lib/crsnap. When it is not
        on btrfs, crsnap makes a btrfs image file in it and loop-mounts it.

        Exit status: 0 success; 1 the operation failed (what was undone is said);
        3 no such container or snapshot; 4 conflicts with the current state
        (e.g. not running, already exists); 64 bad input (nothing was changed).
        guard exits with its command's status after rolling back.
        """,
        subcommands: [
            RunCommand.self, PsCommand.self, TakeCommand.self, ListCommand.self, ShowCommand.self, RollbackCommand.self,
            GuardCommand.self, DiffCommand.self, PruneCommand.self, ResumeCommand.self,
            ExecCommand.self, TopCommand.self, LogsCommand.self, StopCommand.self, RmCommand.self, DeleteCommand.self,
            CompletionCommand.self,
            VerifyCommand.self, DoctorCommand.self, InitCommand.self, MonitorCommand.self, BenchDumpCommand.self, BenchRestoreCommand.self,
            RestoreTestCommand.self, NetworkCommand.self, ExportCommand.self, ImportCommand.self, SendCommand.self, ReceiveCommand.self, MigrateCommand.self,
        ]
    )
}

struct StoreOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The store directory (default: $CRSNAP_STORE or /var/lib/crsnap).", valueName: "path"))
    var store: String?

    func open() throws -> Store {
        try Store.open(try Store.resolvePath(store))
    }

    func openExisting() throws -> Store {
        try Store.openExisting(try Store.resolvePath(store))
    }
}

/// Runs a command body, printing errors as "crsnap: message" with the
/// documented exit status.
func reporting<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let e as CrsnapError {
        FileHandle.standardError.write(Data("crsnap: \(e.message)\n".utf8))
        throw ExitCode(e.exitCode)
    } catch let e as ExitCode {
        throw e
    } catch {
        FileHandle.standardError.write(Data("crsnap: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

/// On a terminal: asks whether to restart the container's command from the
/// files-only snapshot `what`. Elsewhere false (a script passes --yes).
func confirmRestart(_ what: String) -> Bool {
    guard isatty(0) == 1, isatty(2) == 1 else { return false }
    FileHandle.standardError.write(Data("crsnap: \(what) is a files-only snapshot: its files come back and the container's command starts afresh (its processes are not in it). Go on? [y/N] ".utf8))
    guard let answer = readLine()?.trimmingCharacters(in: .whitespaces).lowercased() else { return false }
    return answer == "y" || answer == "yes"
}

func printJSON<T: Encodable>(_ value: T) throws {
    print(String(decoding: try jsonData(value), as: UTF8.self))
}

/// The JSON every command prints: indented, keys sorted, dates ISO 8601.
func jsonData<T: Encodable>(_ value: T) throws -> Data {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    e.dateEncodingStrategy = .iso8601
    return try e.encode(value)
}

/// Prints rows as aligned columns.
func printTable(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    for r in [header] + rows {
        let line = r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
        print(line.joined(separator: "  "))
    }
}

func formatBytes(_ n: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n)
    var i = 0
    while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
    return i == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[i])
}

func formatDate(_ d: Date) -> String {
    let f = DateFormatter()
    f.dateFormat = "yyyy-MM-dd HH:mm:ss"
    return f.string(from: d)
}
