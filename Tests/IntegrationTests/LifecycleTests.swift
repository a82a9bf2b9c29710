import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The snapshot lifecycle scripts rely on: guard, pairs, diff, undo, prune,
/// take --stop / resume, the apt hook.
final class LifecycleTests: XCTestCase {
    var started: [String] = []

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        for name in started { _ = try? crsnap(["rm", "--force", name]) }
    }

    func start(_ prefix: String) throws -> TestContainer {
        let name = uniqueName(prefix)
        try crsnapOK(["run", name, "--env", "UNLINKED_MIB=1", "--", "python3", "-c", workloadSource])
        started.append(name)
        let c = TestContainer(name: name, overlay: true)
        XCTAssertTrue(waitFor(30) { counterLines(c.workloadLog).count >= 5 }, "workload did not start")
        return c
    }

    func listRows(_ name: String) throws -> [[String: Any]] {
        let out = try crsnapOK(["list", name, "--json"])
        return try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [[String: Any]]
    }

    func testGuardRollsBackOnFailureAndPairsOnSuccess() throws {
        let c = try start("it-guard")
        let marker = "\(c.filesDir)/etc/crsnap-guard-marker"
        // A failing "upgrade" inside the container: its change is rolled back,
        // crsnap exits with the command's status, stdout is the command's own.
        let fail = try crsnap(["guard", c.name, "--tag", "upgrade", "--inside", "--", "sh", "-c",
                               "echo upgrading; echo new > /etc/crsnap-guard-marker; exit 3"])
        XCTAssertEqual(fail.status, 3, fail.stderr)
        XCTAssertEqual(fail.stdout, "upgrading\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker), "the failed upgrade's file was rolled back")
        var rows = try listRows(c.name)
        XCTAssertEqual(rows.map { $0["type"] as? String }, ["pre", "pre-rollback"])
        XCTAssertEqual(rows[0]["tag"] as? String, "upgrade")
        XCTAssertTrue(waitFor(10) { (counterLines(c.workloadLog).last ?? 0) > 10 })

        // A succeeding one on the host: pre and post, paired.
        let ok = try crsnap(["guard", c.name, "--tag", "upgrade2", "--json", "--", "true"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        let outcome = try JSONSerialization.jsonObject(with: Data(ok.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(outcome["rolled_back"] as? Bool, false)
        rows = try listRows(c.name)
        let pre = rows.first { $0["id"] as? String == outcome["pre"] as? String }
        let post = rows.first { $0["id"] as? String == outcome["post"] as? String }
        XCTAssertEqual(pre?["type"] as? String, "pre")
        XCTAssertEqual(post?["type"] as? String, "post")
        XCTAssertEqual(post?["pair"] as? String, outcome["pre"] as? String)
        XCTAssertEqual(pre?["pair"] as? String, outcome["post"] as? String)
        // A command that does not exist changes nothing.
        let missing = try crsnap(["guard", c.name, "--", "/nonexistent/upgrade"])
        XCTAssertEqual(missing.status, 64, missing.stderr)
        XCTAssertEqual(try listRows(c.name).count, rows.count)
    }

    func testDiffListsExactlyTheChanges() throws {
        let c = try start("it-diff")
        try crsnapOK(["exec", c.name, "--", "sh", "-c",
                      "mkdir -p /srv/d && echo a > /srv/d/keep && echo b > /srv/d/change && echo c > /srv/d/remove"])
        let a = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        try crsnapOK(["exec", c.name, "--", "sh", "-c",
                      "echo B >> /srv/d/change && rm /srv/d/remove && echo n > /srv/d/new && rm /etc/hostname"])
        let b = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        let out = try crsnapOK(["diff", a, b, "--json"])
        let changes = try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [[String: String]]
        let srv = Set(changes.filter { $0["path"]!.hasPrefix("/srv/") }.map { "\($0["change"]!) \($0["path"]!)" })
        // A directory is listed only when its own mode or owner changed.
        XCTAssertEqual(srv, ["changed /srv/d/change", "deleted /srv/d/remove", "added /srv/d/new"])
        XCTAssertTrue(changes.contains { $0["path"] == "/etc/hostname" && $0["change"] == "deleted" },
                      "a host file deleted in the container (a whiteout): \(changes)")
        XCTAssertFalse(changes.contains { $0["path"]!.contains("/srv/d/keep") }, "unchanged file not listed")
        XCTAssertFalse(changes.contains { $0["path"]!.contains("link_remap") }, "CRIU's link_remap files are not the container's")
        // Snapshot vs the live container.
        try crsnapOK(["exec", c.name, "--", "sh", "-c", "echo x > /srv/d/live"])
        let live = try crsnapOK(["diff", b])
        XCTAssertTrue(live.split(separator: "\n").contains("+ /srv/d/live"), live)
        XCTAssertEqual(try crsnap(["diff", a, "other@1"]).status, 64, "snapshots of two containers")
    }

    func testUndoReturnsToTheStateBeforeTheRollback() throws {
        let c = try start("it-undo")
        let id = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        usleep(600_000)
        try crsnapOK(["rollback", id])
        // The pre-rollback snapshot holds where the workload was.
        let rows = try listRows(c.name)
        XCTAssertEqual(rows.last?["type"] as? String, "pre-rollback")
        let preNumber = rows.last?["number"] as! Int
        let preLast = counterLines(c.snapshotWorkloadLog(preNumber)).last ?? 0
        XCTAssertGreaterThan(preLast, counterLines(c.snapshotWorkloadLog(1)).last ?? 0)
        try crsnapOK(["rollback", "--undo", c.name])
        // Memory and files are the pre-rollback ones: the log carries on from
        // preLast without a gap.
        XCTAssertTrue(waitFor(10) { (counterLines(c.workloadLog).last ?? 0) > preLast + 5 })
        let lines = counterLines(c.workloadLog)
        XCTAssertEqual(lines, Array(1...lines.count), "log consecutive after undo")
        try crsnapOK(["rollback", "--undo", c.name])  // the undo can be undone too
        XCTAssertEqual(try crsnap(["rollback", "--undo", "nobody"]).status, 3)
    }

    func testTakeStopAndResume() throws {
        let c = try start("it-stop")
        let id = try crsnapOK(["take", c.name, "--stop"]).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(waitFor(5) { c.cgroupProcs.isEmpty }, "the processes are gone")
        let ps = try crsnapOK(["ps", "--json"])
        let row = (try JSONSerialization.jsonObject(with: Data(ps.utf8)) as! [[String: Any]]).first { $0["name"] as? String == c.name }
        XCTAssertEqual(row?["state"] as? String, "stopped")
        let last = counterLines(c.snapshotWorkloadLog(1)).last ?? 0
        XCTAssertEqual(counterLines(c.workloadLog).last, last, "nothing ran after the checkpoint")
        try crsnapOK(["resume", c.name])
        XCTAssertTrue(waitFor(10) { (counterLines(c.workloadLog).last ?? 0) > last + 5 }, "resumed from \(id)")
        let lines = counterLines(c.workloadLog)
        XCTAssertEqual(lines, Array(1...lines.count))
        XCTAssertEqual(try crsnap(["resume", c.name]).status, 4, "resume of a running container")
    }

    func testPruneKeepsWhatItMust() throws {
        let c = try start("it-prune")
        for i in 1...3 { try crsnapOK(["take", c.name] + (i == 1 ? ["--tag", "keepme"] : [])) }
        let pre = try crsnapOK(["take", c.name, "--pre"]).trimmingCharacters(in: .whitespacesAndNewlines)
        try crsnapOK(["take", c.name, "--post", pre])
        let dry = try crsnapOK(["prune", c.name, "--keep-last", "1", "--keep-tagged", "--dry-run"])
        // @4 (pre) stays with its post @5; tagged @1 stays; @2 and @3 would go.
        XCTAssertEqual(dry.split(separator: "\n").map(String.init), ["\(c.name)@2", "\(c.name)@3"])
        XCTAssertEqual(try listRows(c.name).count, 5, "dry run deletes nothing")
        try crsnapOK(["prune", c.name, "--keep-last", "1", "--keep-tagged"])
        XCTAssertEqual(try listRows(c.name).map { $0["number"] as! Int }, [1, 4, 5])
        // A saved policy applies after each take.
        try crsnapOK(["prune", c.name, "--keep-last", "2", "--save"])
        try crsnapOK(["take", c.name])
        // keep-last 2 keeps @6 and @5, and @4 as @5's pair; the saved policy
        // does not keep tags, so @1 goes.
        XCTAssertEqual(try listRows(c.name).map { $0["number"] as! Int }, [4, 5, 6])
        XCTAssertEqual(try crsnap(["prune", c.name, "--older-than", "7x"]).status, 64)
        XCTAssertEqual(try crsnap(["prune", c.name, "--keep-last", "0"]).status, 64)
    }

    func testAptHookTakesPairedSnapshots() throws {
        let c = try start("it-apt")
        let state = NSTemporaryDirectory() + "crsnap-apt-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: state) }
        let hook = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../Scripts/apt-hook").standardized.path
        func runHook(_ phase: String) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: hook)
            p.arguments = [phase]
            var env = ProcessInfo.processInfo.environment
            env["CRSNAP_BIN"] = Env.binary
            env["CRSNAP_STORE"] = Env.store
            env["CRSNAP_APT_CONTAINERS"] = c.name
            env["CRSNAP_APT_STATE"] = state
            p.environment = env
            try p.run()
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0)
        }
        try crsnapOK(["prune", c.name, "--keep-last", "2", "--save"])
        for round in 1...2 {
            try runHook("pre")
            // The fake dpkg run: a package's files change inside the container.
            try crsnapOK(["exec", c.name, "--", "sh", "-c", "mkdir -p /var/lib/fake-dpkg && echo \(round) > /var/lib/fake-dpkg/status"])
            try runHook("post")
        }
        let rows = try listRows(c.name)
        // Retention (keep-last 2) kept the newest pair only.
        XCTAssertEqual(rows.map { $0["type"] as? String }, ["pre", "post"])
        XCTAssertEqual(rows.map { $0["tag"] as? String }, ["apt", "apt"])
        XCTAssertEqual(rows[1]["pair"] as? String, rows[0]["id"] as? String)
        let n = rows[1]["number"] as! Int
        XCTAssertEqual(try String(contentsOfFile: "\(c.snapshotFiles(n))/var/lib/fake-dpkg/status", encoding: .utf8), "2\n")
        let pre = rows[0]["number"] as! Int
        XCTAssertEqual(try String(contentsOfFile: "\(c.snapshotFiles(pre))/var/lib/fake-dpkg/status", encoding: .utf8), "1\n",
                       "the pre snapshot is from before the second dpkg run")
    }

    /// Every command's --json parses and carries the documented fields.
    func testJSONOutputsHaveTheDocumentedFields() throws {
        let c = try start("it-json2")
        func object(_ args: [String]) throws -> Any {
            let out = try crsnapOK(args)
            return try JSONSerialization.jsonObject(with: Data(out.utf8))
        }
        func keys(_ o: Any) -> Set<String> { Set((o as? [String: Any])?.keys.map { $0 } ?? []) }
        let take = try object(["take", c.name, "--json"])
        // tag and pair are left out when unset.
        XCTAssertTrue(keys(take).isSuperset(of: ["id", "number", "container", "created", "role", "stats", "criu", "stopped"]), "\(keys(take))")
        XCTAssertTrue(keys((take as! [String: Any])["stats"]!).isSuperset(of: ["frozen_ms", "fs_snapshot_ms", "dump_ms", "images_bytes", "freezing_ms", "pause_ms"]))
        let show = try object(["show", "\(c.name)@1", "--json"])
        XCTAssertTrue(keys(show).isSuperset(of: ["id", "container", "type", "created", "stopped", "filesystems", "unlinked", "tmpfs", "volumes", "kept", "stats"]), "\(keys(show))")
        for f in ((show as! [String: Any])["filesystems"] as! [Any]) {
            XCTAssertTrue(keys(f).isSuperset(of: ["mount", "holds", "snapshot", "captured"]), "\(keys(f))")
        }
        for u in ((show as! [String: Any])["unlinked"] as! [Any]) {
            XCTAssertEqual(keys(u), ["path", "size", "captured", "held", "mapped"])
        }
        let verify = try object(["verify", "\(c.name)@1", "--json"])
        XCTAssertEqual(keys(verify), ["id", "ok", "problems", "images_checked"])
        let list = try object(["list", c.name, "--json"]) as! [Any]
        XCTAssertTrue(keys(list[0]).isSuperset(of: ["id", "number", "type", "created", "age_seconds", "pause_ms", "frozen_ms", "fs_snapshot_ms", "images_bytes", "stopped"]), "\(keys(list[0]))")
        let ps = try object(["ps", "--json"]) as! [Any]
        XCTAssertTrue(ps.contains { keys($0).isSuperset(of: ["name", "state", "pid", "backend", "snapshots"]) })
        let rb = try object(["rollback", "\(c.name)@1", "--json"])
        XCTAssertEqual(keys(rb), ["id", "pid", "pre_rollback", "restarted", "stats", "tcp"])
        XCTAssertEqual(keys((rb as! [String: Any])["stats"]!), ["total_ms", "pre_rollback_ms", "flush_ms", "kill_ms", "fs_ms", "restore_ms", "lazy_pages_ms",
                                                                "keep_ms", "locks_checked", "locks_repaired", "lock_repair_ms"])
        let diff = try object(["diff", "\(c.name)@1", "--json"]) as! [Any]
        for d in diff { XCTAssertEqual(keys(d), ["path", "change"]) }
        let prune = try object(["prune", c.name, "--keep-last", "5", "--dry-run", "--json"])
        XCTAssertNotNil(prune as? [String])
        let doctor = try crsnap(["doctor", "--json"])
        let checks = try JSONSerialization.jsonObject(with: Data(doctor.stdout.utf8)) as! [Any]
        for ch in checks { XCTAssertEqual(keys(ch), ["name", "status", "detail"]) }
        let initOut = try object(["init", "--json"])
        XCTAssertEqual(keys(initOut), ["store", "root", "backend", "image"])
    }

    func testCompletionAndHelp() throws {
        for sh in ["bash", "zsh", "fish"] {
            let r = try crsnap(["completion", sh])
            XCTAssertEqual(r.status, 0)
            XCTAssertTrue(r.stdout.contains("rollback"), "\(sh) completion knows the subcommands")
        }
        XCTAssertEqual(try crsnap(["completion", "tcsh"]).status, 64)
        for cmd in ["run", "take", "rollback", "guard", "diff", "prune", "list", "show", "resume", "delete", "verify"] {
            let r = try crsnap(["help", cmd])
            XCTAssertEqual(r.status, 0)
            XCTAssertTrue(r.stdout.contains("USAGE"), "help \(cmd)")
        }
    }
}
