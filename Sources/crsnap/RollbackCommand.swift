import ArgumentParser
import CrsnapCore
import Foundation

struct RollbackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback",
        abstract: "Roll a container's files and processes back to a snapshot.",
        discussion: """
        A running container is first checkpointed and stopped in one step (a
        pre-rollback snapshot, so `rollback --undo NAME` can return to it); then
        its writable volume is replaced by a writable clone of the snapshot's and
        the processes are restored with CRIU, so memory and disk agree again.
        The file locks they held (POSIX, OFD, flock) are held again before any
        of them runs; one that cannot come back fails the restore, naming the
        process, the file and the range.
        The replaced volume is kept until the restore has succeeded. If the
        restore fails, the pre-rollback state is restored instead.
        Works on a stopped container too. Paths the container keeps across
        rollback (run --keep) get their contents from before the rollback.
        In the host's network (run --network host), TCP connections of the
        processes the rollback stopped come back closed: their peers saw them
        end, and a client reconnects (a stopped container's come back
        established). A container with a network of its own (--network none
        or bridge) gets its network namespace back from the snapshot, its
        address with it: connections between its own sockets come back
        established, those to peers outside it aborted (the restored process
        sees a reset; the peer saw the end and reconnects). Listening sockets,
        UDP and unix sockets come back as they were.

        With --lazy the processes run as soon as CRIU has restored them, before
        their memory is back: CRIU's lazy-pages daemon (userfaultfd) brings a
        page back when a process touches it and the rest in the background, so
        a large service answers sooner. rollback returns once every page is
        back; should the daemon end before that, the restored processes are
        killed and the pre-rollback state is restored (eagerly).
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Flag(help: "Undo the last rollback of container TARGET: go back to the state it replaced.")
    var undo = false
    @Flag(help: "Do not take the pre-rollback snapshot (faster; the rollback cannot be undone).")
    var noPreSnapshot = false
    @Flag(help: "Restore the processes' memory on demand (CRIU lazy pages): they run before all of it is back.")
    var lazy = false
    @Flag(help: "Agree that rolling back to a files-only snapshot restarts the container's command (asked on a terminal; needed in scripts).")
    var yes = false
    @Option(help: ArgumentHelp("What the restored processes' TCP connections come back as: close (all shut down; their peers reconnect) or restore (all established, as in the snapshot). Default: with a network of its own, established between its own sockets and aborted to peers outside (close-outside); in the host's network, close when the rollback stopped the processes, else restore. A snapshot that saved no connections (a migrate's stop) restores them closed.", valueName: "close|restore"))
    var tcp: String?
    @Flag(help: "Print JSON: id, pid, pre_rollback, restarted (the command was started afresh: a files-only snapshot), tcp (close, restore or close-outside), stats (total_ms; pre_rollback_ms, the snapshot of the state replaced; flush_ms, writing the store's dirty data back while the tasks still run; kill_ms, stopping the tasks; fs_ms, the snapshot's files put in place (keep_ms of it copying run --keep paths); restore_ms, CRIU's restore; lazy_pages_ms, with --lazy the time the tasks ran before all their memory was back; locks_checked, locks_repaired, lock_repair_ms).") var json = false
    @Argument(help: ArgumentHelp("Snapshot id NAME@N (with --undo: the container NAME).", valueName: "target"))
    var target: String

    func run() throws {
        try reporting {
            let store = { try storeOptions.openExisting() }
            let tcp = try self.tcp.map(TCPRestore.init(parsing:))
            let r: RollbackResult
            if undo {
                try Names.validate(target)
                let s = try store()
                let restart = yes || (Rollback.isFilesOnly(store: s, name: target, number: nil, undo: true)
                                      && confirmRestart("the state the last rollback of \(target) replaced"))
                r = try Rollback.undo(store: s, name: target, lazy: lazy, restart: restart, tcp: tcp)
            } else {
                let sid = try SnapshotID(parsing: target)
                let s = try store()
                let restart = yes || (Rollback.isFilesOnly(store: s, name: sid.container, number: sid.number)
                                      && confirmRestart("\(sid)"))
                r = try Rollback.rollback(store: s, id: sid, preSnapshot: !noPreSnapshot, lazy: lazy, restart: restart, tcp: tcp)
            }
            if r.restarted { Progress.note("\(r.id) holds files only: the container's command was started afresh (init pid \(r.pid))") }
            if let pre = r.pre_rollback { Progress.note("replaced state kept as \(pre) (crsnap rollback --undo to return)") }
            if json { try printJSON(r) }
        }
    }
}

struct ResumeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resume",
        abstract: "Bring a stopped container back from its newest snapshot (after take --stop or a reboot).")

    @OptionGroup var storeOptions: StoreOptions
    @Flag(help: "Restore the processes' memory on demand (CRIU lazy pages), as rollback --lazy.")
    var lazy = false
    @Flag(help: "Agree that resuming from a files-only snapshot starts the container's command afresh (asked on a terminal; needed in scripts).")
    var yes = false
    @Option(help: ArgumentHelp("What the restored processes' TCP connections come back as: close or restore, as rollback --tcp. Default: with a network of its own, close-outside as for rollback; in the host's network, restore (CRIU closed them silently when it stopped the container). A snapshot that saved no connections (a migrate's stop) restores them closed.", valueName: "close|restore"))
    var tcp: String?
    @Argument(help: "Container name.") var name: String

    func run() throws {
        try reporting {
            try Names.validate(name)
            let tcp = try self.tcp.map(TCPRestore.init(parsing:))
            let s = try storeOptions.openExisting()
            let restart = yes || (Rollback.isFilesOnly(store: s, name: name, number: nil) && confirmRestart("the newest snapshot of \(name)"))
            let r = try Rollback.resume(store: s, name: name, lazy: lazy, restart: restart, tcp: tcp)
            Progress.note("resumed \(name) from \(r.id)")
        }
    }
}
