import ArgumentParser
import CrsnapCore
import Foundation

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check a snapshot end to end.",
        discussion: """
        Checks that the manifest parses and names this snapshot, that every CRIU
        image matches the SHA-256 recorded at take time (and that no image was
        added), that the filesystem snapshot exists and is read-only, and that
        the unlinked open files it captured are there with their sizes.
        rollback runs the same checks first. Changes nothing. Exits 1 when the
        snapshot is damaged, naming each problem.

        With --restore-test it then restores the snapshot into a throwaway
        container and watches it for --for seconds (2): its own pid, mount and
        network namespaces (loopback only: its listening sockets bind beside
        the live container's and reach nothing; TCP connections come back
        closed), a writable clone of the snapshot's files and snapshotted
        volumes, other volumes under an overlay that takes any writes. The
        test passes when CRIU restores the tree and its init is still running
        at the end; tasks that ended meanwhile are listed. Then the tree is
        killed and every clone, mount and cgroup removed; the live container
        and the snapshot are untouched. Exits 1 when the restore test fails,
        naming what CRIU or the init said.
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Flag(help: "Print JSON: id, ok, problems, images_checked, restore_test (with --restore-test: ok, problem, tasks, ended, restore_ms, watched_ms, total_ms).") var json = false
    @Flag(help: "Also restore the snapshot into a throwaway container and check it stays up.") var restoreTest = false
    @Option(name: .customLong("for"), help: ArgumentHelp("With --restore-test: how long the restored tree must stay up, in seconds (default 2).", valueName: "seconds"))
    var seconds: Double?
    @Argument(help: "Snapshot id, NAME@N.") var id: String

    struct Output: Encodable {
        let report: Verify.Report
        let restoreTest: RestoreTest.Report?

        func encode(to encoder: Encoder) throws {
            try report.encode(to: encoder)
            enum Key: String, CodingKey { case restore_test }
            var c = encoder.container(keyedBy: Key.self)
            try c.encodeIfPresent(restoreTest, forKey: .restore_test)
        }
    }

    func run() throws {
        try reporting {
            let sid = try SnapshotID(parsing: id)
            if seconds != nil && !restoreTest {
                throw CrsnapError(.usage, "--for needs --restore-test")
            }
            if let s = seconds, !(s > 0 && s <= RestoreTest.maxSeconds) {
                throw CrsnapError(.usage, "--for must be more than 0 and at most \(Int(RestoreTest.maxSeconds)) seconds, not \(s)")
            }
            let store = try storeOptions.openExisting()
            let r = try Verify.verify(store: store, id: sid)
            var test: RestoreTest.Report?
            if r.ok && restoreTest {
                test = try RestoreTest.run(store: store, id: sid, seconds: seconds ?? RestoreTest.defaultSeconds)
            }
            if json {
                try printJSON(Output(report: r, restoreTest: test))
            } else if r.ok {
                print("\(r.id): ok (\(r.images_checked) images match their checksums; fs snapshot present and read-only)")
                if let t = test, t.ok {
                    let ended = t.ended.isEmpty ? "" : "; ended meanwhile: \(t.ended.joined(separator: ", "))"
                    print("\(r.id): restore test ok (\(t.tasks) tasks restored in \(Int(t.restore_ms)) ms, up for \(String(format: "%.1f", t.watched_ms / 1000)) s in a throwaway container\(ended); removed)")
                }
            }
            if !r.ok {
                throw CrsnapError(.failed, "snapshot \(r.id) is damaged: " + r.problems.joined(separator: "; "))
            }
            if let t = test, !t.ok {
                throw CrsnapError(.failed, "the restore test of \(r.id) failed: \(t.problem ?? "?")")
            }
        }
    }
}

/// `verify --restore-test`'s inside: run by crsnap as pid 1 of new pid,
/// mount and network namespaces; prints its report as JSON.
struct RestoreTestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_restore-test", shouldDisplay: false)

    @OptionGroup var storeOptions: StoreOptions
    @Argument var name: String
    @Argument var number: Int
    @Argument var seconds: Double

    func run() throws {
        try reporting {
            let r = RestoreTest.inner(store: try storeOptions.openExisting(), name: name, number: number, seconds: seconds)
            try printJSON(r)
        }
    }
}
