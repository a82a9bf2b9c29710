import ArgumentParser
import CrsnapCore
import Foundation

struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check root, kernel features, CRIU (version over RPC and `criu check`) and the store; or, given container names, what would stop a take of each.",
        discussion: """
        Without names: the machine and the store. Exits 1 when any check fails;
        warnings do not fail.

        With names (and no --repair): a preflight of each running container,
        freezing nothing: what would make CRIU fail after the freeze (blockers:
        a task of another user while crsnap lacks CAP_SYS_RESOURCE, an open
        file on a mount the container does not have, a kind of file CRIU cannot
        dump such as a userfaultfd, one end of a unix stream connection whose
        other end is outside the container, an unlinked file on a tmpfs over
        the ghost limit) and what would make the snapshot weaker than it looks
        (warnings: a TCP connection to a peer outside the container), each
        named with the process, fd and path. Exits 1 when a take would fail.
        take runs the same checks first and fails before freezing. --json
        prints a list of {container, take_would_fail, tasks, findings
        [{severity, kind, pid, process, fd, path, detail}], network, preflight_ms}.
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "Finish or undo interrupted operations (journal), thaw containers left frozen, remove leftovers (also a host-side veth or a forwarded port of the store's subnet that no container leases); then check.")
    var repair = false
    @Argument(help: "Containers to check before a take (with --repair: only these are repaired; default all).") var names: [String] = []

    func run() throws {
        if !names.isEmpty && !repair { return try runPreflight() }
        if repair { try runRepair() }
        var checks = try reporting { Doctor.run(storePath: try Store.resolvePath(storeOptions.store)) }
        if !repair, let store = try? storeOptions.openExisting() {
            checks += Repair.pendingChecks(store: store)
        }
        if json {
            try printJSON(checks)
        } else {
            for c in checks {
                let mark = c.status == .ok ? "ok  " : c.status == .warn ? "warn" : "FAIL"
                print("\(mark)  \(c.name): \(c.detail)")
            }
        }
        if checks.contains(where: { $0.status == .fail }) { throw ExitCode(1) }
    }

    func runPreflight() throws {
        let reports = try reporting { () -> [TakePreflight.Report] in
            for n in names { try Names.validate(n) }
            let store = try storeOptions.openExisting()
            return try names.map { try TakePreflight.run(store: store, name: $0) }
        }
        if json {
            try printJSON(reports)
        } else {
            for (i, r) in reports.enumerated() {
                if i > 0 { print("") }
                print("container \(r.container): \(r.tasks) task\(r.tasks == 1 ? "" : "s"); network: \(r.network)")
                for f in r.findings { print("\(f.severity == .blocker ? "BLOCKER" : "warning")  \(f.description)") }
                let b = r.blockers.count, w = r.warnings.count
                print(b > 0 ? "a take would fail: \(b) blocker\(b == 1 ? "" : "s")\(w > 0 ? ", \(w) warning\(w == 1 ? "" : "s")" : "")"
                      : "nothing stands in the way of a take" + (w > 0 ? " (\(w) warning\(w == 1 ? "" : "s"))" : ""))
            }
        }
        if reports.contains(where: \.take_would_fail) { throw ExitCode(1) }
    }

    func runRepair() throws {
        let outcomes = try reporting { () -> [Repair.Outcome] in
            for n in names { try Names.validate(n) }
            let store = try storeOptions.openExisting()
            for n in names { try Container(store: store, name: n).mustExist() }
            return Repair.repairAll(store: store, only: names)
        }
        for o in outcomes {
            for a in o.actions { FileHandle.standardError.write(Data("repair: \(a)\n".utf8)) }
            if let e = o.error { FileHandle.standardError.write(Data("repair: \(o.container): FAILED: \(e)\n".utf8)) }
        }
        if outcomes.contains(where: { $0.error != nil }) { throw ExitCode(1) }
    }
}

struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create the store now (otherwise the first run does); prints where its root is.",
        discussion: """
        --backend btrfs (the default) uses the store path itself when it is on
        btrfs, else makes a btrfs image file in it and loop-mounts it: snapshots
        are O(1). --backend copy keeps plain directories on the path's own
        filesystem (ext4, xfs): every take copies the container's writable files
        inside the freeze, or clones them where the filesystem can (xfs with
        reflink=1, probed now); take --json reports copied_bytes and, on such a
        filesystem, reflinked_bytes.
        """)

    @OptionGroup var storeOptions: StoreOptions
    @Option(help: "btrfs or copy.") var backend: String = "btrfs"
    @Flag(help: "Print JSON.") var json = false

    struct Out: Encodable { var store: String; var root: String; var backend: String; var image: Bool }

    func run() throws {
        try reporting {
            guard let kind = Store.Kind(rawValue: backend) else {
                throw CrsnapError(.usage, "invalid --backend \"\(backend)\": expected btrfs or copy")
            }
            let s = try Store.open(try Store.resolvePath(storeOptions.store), kind: kind)
            if json {
                try printJSON(Out(store: s.path, root: s.root, backend: s.backend.name, image: s.usesImage))
            } else {
                print(s.root)
            }
        }
    }
}

/// The per-container monitor; started by run and rollback, not by people.
struct MonitorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_monitor", shouldDisplay: false)

    @OptionGroup var storeOptions: StoreOptions
    @Flag var idle = false
    @Argument var name: String

    func run() throws {
        let store = try reporting { try storeOptions.openExisting() }
        throw ExitCode(Monitor.main(store: store, name: name, idle: idle))
    }
}

/// For Scripts/bench-freeze: a bare CRIU dump of a container (no fs capture).
struct BenchDumpCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_bench-dump", shouldDisplay: false)

    @OptionGroup var storeOptions: StoreOptions
    @Option var scratch: String
    /// CRIU's ghost limit in bytes (the bare dump copies unlinked files as ghosts).
    @Option var ghostLimit: UInt32?
    @Argument var name: String

    func run() throws {
        try reporting {
            try printJSON(try BareDump.dump(store: try storeOptions.openExisting(), name: name, scratch: scratch,
                                            ghostLimit: ghostLimit))
        }
    }
}

/// For Scripts/bench-pause: kill a container's tasks and restore a
/// snapshot's images with CRIU, nothing else (see `BareRestore`).
struct BenchRestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_bench-restore", shouldDisplay: false)

    @OptionGroup var storeOptions: StoreOptions
    @Argument var id: String

    func run() throws {
        try reporting {
            try printJSON(try BareRestore.restore(store: try storeOptions.openExisting(), id: try SnapshotID(parsing: id)))
        }
    }
}
