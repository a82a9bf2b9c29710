import ArgumentParser
import CrsnapCore
import Foundation

struct GuardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guard",
        abstract: "Take a pre snapshot, run a command (and a health check), roll back if either fails, else take a paired post snapshot.",
        discussion: """
        For upgrade scripts: `crsnap guard web --tag upgrade -- ./upgrade.sh`.
        The command runs on the host with crsnap's stdio (or, with --inside,
        inside the container's namespaces). If it exits non-zero, the container
        is rolled back to the pre snapshot (files and processes) and crsnap
        exits with the command's status. If it succeeds and --check EXECUTABLE
        is given, that program runs where the command ran (no arguments, no
        shell, stdin /dev/null, its output on stderr; e.g. a script that asks
        the service a question): if it exits non-zero or outlives
        --check-timeout (then it is killed), the container is rolled back to
        the pre snapshot the same way and crsnap exits with the check's status
        (124 when it timed out). Otherwise a post snapshot paired with the pre
        is taken and crsnap exits 0. With --test the pre snapshot must first
        pass a restore test (see verify --restore-test): if it does not, it is
        deleted again, the command is not run and crsnap exits 1. stdout
        carries only the command's own output; snapshot ids go to stderr when
        it is a terminal (--json prints pre, post, status, rolled_back, failed
        (command, check or null), check_status, check_timed_out and
        restore_test on stdout after the command's output).
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Option(help: "Tag for both snapshots.") var tag: String?
    @Flag(help: "Run the command (and the check) inside the container instead of on the host.") var inside = false
    @Option(help: ArgumentHelp("After the command succeeded, run this program (no arguments) as a health check; roll back if it fails.", valueName: "executable"))
    var check: String?
    @Option(help: ArgumentHelp("Seconds the check may run before it counts as failed (default 60).", valueName: "seconds"))
    var checkTimeout: Double?
    @Flag(help: "Before the command, restore the pre snapshot into a throwaway container (verify --restore-test); do not run the command if that fails.")
    var test = false
    @Flag(help: "Print the outcome as JSON after the command's output.") var json = false
    @Argument(help: "Container name.") var name: String
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

    func run() throws {
        let outcome = try reporting { () -> Guard.Outcome in
            try Names.validate(name)
            if checkTimeout != nil && check == nil {
                throw CrsnapError(.usage, "--check-timeout needs --check EXECUTABLE; nothing was changed")
            }
            let probe = check.map { Guard.Check(executable: $0, timeout: checkTimeout ?? Guard.Check.defaultTimeout) }
            return try Guard.run(store: try storeOptions.openExisting(), name: name, tag: tag, inside: inside,
                                 command: command, check: probe, test: test)
        }
        if json { try printJSON(outcome) }
        if outcome.status != 0 { throw ExitCode(outcome.status) }
    }
}

struct DiffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "List files added (+), changed (c) and deleted (-) between two snapshots, or a snapshot and now.",
        discussion: """
        Compares the snapshots' btrfs trees (for an overlay root, the upper
        dirs) by metadata: unchanged files share their inode with the snapshot,
        so no file data is read. Paths are as the container sees them.
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Flag(help: "Print JSON: [{path, change}], change one of added, changed, deleted.") var json = false
    @Argument(help: "The older snapshot, NAME@N.") var from: String
    @Argument(help: "The newer snapshot of the same container (default: the live container).") var to: String?

    func run() throws {
        try reporting {
            let a = try SnapshotID(parsing: from)
            let b = try to.map { try SnapshotID(parsing: $0) }
            let changes = try Diff.diff(store: try storeOptions.openExisting(), a, b)
            if json { return try printJSON(changes) }
            for ch in changes {
                let mark = ch.change == .added ? "+" : ch.change == .deleted ? "-" : "c"
                print("\(mark) \(ch.path)")
            }
        }
    }
}

struct PruneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Delete old snapshots by a retention policy.",
        discussion: """
        A snapshot goes only when every limit given agrees: beyond the newest
        --keep-last AND older than --older-than. --max-size then deletes the
        oldest remaining candidates until the container's snapshots fit: their
        images and the bytes of their files no other snapshot or the live
        container shares (FS EXCL in crsnap list), as measured before the
        prune (extents shared only with a deleted snapshot count at the next one).
        Never deleted: the newest snapshot, tagged ones with --keep-tagged, the
        snapshot `rollback --undo` needs, and half of a pre/post pair whose
        other half stays. --save stores the policy for this container: prune
        without limits then uses it, and every take applies it.
        Prints the ids deleted (with --dry-run: that would be).
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Option(help: "Keep the newest N.") var keepLast: Int?
    @Flag(help: "Keep every tagged snapshot.") var keepTagged = false
    @Option(help: ArgumentHelp("Only delete snapshots older than this (e.g. 30m, 12h, 7d, 2w).", valueName: "age"))
    var olderThan: String?
    @Option(help: ArgumentHelp("Keep the container's snapshots (images and exclusive file bytes) under this size (e.g. 500M, 2G).", valueName: "size"))
    var maxSize: String?
    @Flag(help: "Save these limits as the container's policy (applied after every take).") var save = false
    @Flag(help: "List what would be deleted; delete nothing.") var dryRun = false
    @Flag(help: "Print JSON: the ids.") var json = false
    @Argument(help: "Container name.") var name: String

    func run() throws {
        try reporting {
            try Names.validate(name)
            if let k = keepLast, k < 1 { throw CrsnapError(.usage, "invalid --keep-last \(k): keep at least 1") }
            var policy: RetentionPolicy?
            if keepLast != nil || olderThan != nil || maxSize != nil || keepTagged {
                policy = RetentionPolicy(keepLast: keepLast, keepTagged: keepTagged,
                                         olderThan: try olderThan.map(Retention.parseAge),
                                         maxImagesBytes: try maxSize.map(Retention.parseSize))
            }
            let store = try storeOptions.openExisting()
            if save {
                guard let policy, policy.hasLimit else { throw CrsnapError(.usage, "--save needs a limit (--keep-last, --older-than, --max-size)") }
                let c = try Container(store: store, name: name)
                try c.mustExist()
                try Retention.save(policy, for: c)
            }
            let ids = try Retention.prune(store: store, name: name, policy: policy, dryRun: dryRun)
            if json { return try printJSON(ids) }
            for id in ids { print(id) }
        }
    }
}

struct CompletionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "completion",
        abstract: "Print a shell completion script: crsnap completion bash > /etc/bash_completion.d/crsnap")

    @Argument(help: "bash, zsh or fish.") var shell: String

    func run() throws {
        try reporting {
            guard let sh = CompletionShell(rawValue: shell) else {
                throw CrsnapError(.usage, "invalid shell \"\(shell)\": expected bash, zsh or fish")
            }
            print(Crsnap.completionScript(for: sh))
        }
    }
}
