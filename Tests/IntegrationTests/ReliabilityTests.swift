import FSSnapshot
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Shared by the reliability tests: a counter workload and the invariants
/// that must hold after any interruption.
class ReliabilityCase: XCTestCase {
    var started: [(name: String, store: String?)] = []

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        for (name, store) in started { _ = try? crsnap(["rm", "--force", name], store: store) }
    }

    /// `env` is crsnap's own environment for `run` (and so its monitor's).
    func startCounter(_ prefix: String, unlinkedMiB: Int = 8, memoryMiB: Int = 0, store: String? = Env.store,
                      env: [String: String] = [:]) throws -> TestContainer {
        let name = uniqueName(prefix)
        let r = try crsnap(["run", name, "--env", "UNLINKED_MIB=\(unlinkedMiB)", "--env", "MEMORY_MIB=\(memoryMiB)",
                            "--", "python3", "-c", workloadSource],
                           env: env, store: store)
        XCTAssertEqual(r.status, 0, "run \(name): \(r.stderr)")
        if r.status != 0 { throw XCTSkip("cannot start \(name)") }
        started.append((name, store))
        let c = TestContainer(name: name, overlay: true, store: store ?? Env.store!)
        XCTAssertTrue(waitFor(30) { counterLines(c.workloadLog).count >= 5 }, "workload in \(name) did not start")
        return c
    }

    /// The log is 1, 2, ..., n: memory and files agree.
    func assertConsecutive(_ c: TestContainer, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let lines = counterLines(c.workloadLog)
        XCTAssertFalse(lines.isEmpty, "\(what): empty log", file: file, line: line)
        for (i, v) in lines.enumerated() where v != i + 1 {
            XCTFail("\(what): log line \(i + 1) holds \(v) (gap or duplicate)", file: file, line: line)
            return
        }
    }

    func listed(_ c: TestContainer) throws -> [String] {
        let r = try crsnap(["list", c.name, "--json"], store: c.store)
        XCTAssertEqual(r.status, 0, r.stderr)
        let arr = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8))) as? [[String: Any]] ?? []
        return arr.compactMap { $0["id"] as? String }
    }

    /// What must hold after any operation, interrupted or not: no journal, no
    /// staging or aside volumes, every listed snapshot verifies, no subvolume
    /// that is not the volume or a listed snapshot's, the container running and
    /// thawed with memory agreeing with files, no CRIU leftovers in its files.
    func assertHealthy(_ c: TestContainer, _ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let fm = FileManager.default
        XCTAssertFalse(fm.fileExists(atPath: "\(c.dir)/journal.json"), "\(what): journal left", file: file, line: line)
        for aside in ["fs.prev", "fs.next"] {
            XCTAssertFalse(fm.fileExists(atPath: "\(c.dir)/\(aside)"), "\(what): \(aside) left", file: file, line: line)
        }
        let ids = try listed(c)
        let entries = ((try? fm.contentsOfDirectory(atPath: "\(c.dir)/snapshots")) ?? []).sorted()
        XCTAssertEqual(entries, ids.map { String($0.split(separator: "@").last!) }.sorted(),
                       "\(what): snapshot directories are exactly the listed snapshots", file: file, line: line)
        for id in ids {
            let v = try crsnap(["verify", id], store: c.store)
            XCTAssertEqual(v.status, 0, "\(what): \(id) does not verify: \(v.stderr)", file: file, line: line)
        }
        var subvolumes: [String] = []
        for e in (try? fm.contentsOfDirectory(atPath: c.dir)) ?? [] where Btrfs.isSubvolume("\(c.dir)/\(e)") { subvolumes.append(e) }
        for e in entries where Btrfs.isSubvolume("\(c.dir)/snapshots/\(e)/fs") { subvolumes.append("snapshots/\(e)/fs") }
        XCTAssertEqual(subvolumes.sorted(), (["fs"] + entries.map { "snapshots/\($0)/fs" }).sorted(),
                       "\(what): no leaked subvolume", file: file, line: line)
        XCTAssertEqual(c.freezerState, "THAWED", "\(what): left frozen", file: file, line: line)
        XCTAssertEqual(mountsBelow("\(c.dir)/snapshots"), [], "\(what): no staging tmpfs left mounted", file: file, line: line)
        let ps = try crsnap(["ps", "--json"], store: c.store)
        let rows = (try? JSONSerialization.jsonObject(with: Data(ps.stdout.utf8))) as? [[String: Any]] ?? []
        XCTAssertEqual(rows.first { $0["name"] as? String == c.name }?["state"] as? String, "running",
                       "\(what): container not running", file: file, line: line)
        let n = counterLines(c.workloadLog).last ?? 0
        XCTAssertTrue(waitFor(10) { (counterLines(c.workloadLog).last ?? 0) > n + 3 }, "\(what): the workload does not run on", file: file, line: line)
        assertConsecutive(c, what, file: file, line: line)
        let names = (try? fm.contentsOfDirectory(atPath: "\(c.filesDir)/var/lib/crsnap-workload")) ?? []
        XCTAssertEqual(Set(names), ["log", "h2"], "\(what): no link_remap or ghost leftovers in the container's files", file: file, line: line)
        XCTAssertFalse(fm.fileExists(atPath: "\(c.filesDir)/.crsnap-unlinked"), "\(what): no scratch of unlinked files left", file: file, line: line)
        let logs = try crsnap(["logs", c.name], store: c.store).stdout
        let errors = logs.split(separator: "\n").filter { $0.hasPrefix("ERR") || $0.contains("Traceback") }
        XCTAssertTrue(errors.isEmpty, "\(what): workload reported \(errors.prefix(3))", file: file, line: line)
    }
}

/// A kill (SIGKILL of crsnap itself, CRSNAP_FAULT=kill:STEP with
/// CRSNAP_TEST_HOOKS=1) at every named step of take, rollback and delete;
/// then the watchdog, the next command or `doctor --repair` must leave the
/// container running and thawed and the store consistent.
final class CrashSafetyTests: ReliabilityCase {
    static let takeSteps = ["take.locked", "take.pre-dump", "take.frozen", "take.post-dump", "take.fs-snapshot",
                            "take.fs-snapshotted", "take.unlinked", "take.dumped", "take.thawed", "take.staged", "take.manifest",
                            "take.renamed"]
    /// Killed with the tasks frozen: by crsnap (take.frozen: CRIU has not
    /// seized them yet; take.dumped: CRIU has let go of them) or by CRIU.
    static let frozenSteps: Set<String> = ["take.frozen", "take.post-dump", "take.fs-snapshot", "take.fs-snapshotted",
                                           "take.unlinked", "take.dumped"]

    /// Recovery by the next command (take) or by `doctor --repair`, alternately.
    func recover(_ c: TestContainer, byRepair: Bool, _ what: String) throws {
        if byRepair {
            let r = try crsnap(["doctor", "--repair", c.name])
            XCTAssertEqual(r.status, 0, "\(what): doctor --repair: \(r.stdout) \(r.stderr)")
        } else {
            let r = try crsnap(["take", c.name])
            XCTAssertEqual(r.status, 0, "\(what): the next take: \(r.stderr)")
        }
    }

    func testKillAtEveryTakeStep() throws {
        let c = try startCounter("it-killtake")
        let pids = c.namespacePids
        for (i, step) in Self.takeSteps.enumerated() {
            let before = try listed(c)
            // take.staged: images staged in memory, copied to the store after the thaw.
            let stage = step == "take.staged" ? ["--stage", "memory"] : []
            let r = try crsnap(["take", c.name] + stage, env: ["CRSNAP_FAULT": "kill:\(step)"])
            XCTAssertEqual(r.status, 128 + SIGKILL, "\(step): crsnap was killed: \(r.stderr)")
            if step == "take.staged" {
                XCTAssertFalse(mountsBelow("\(c.dir)/snapshots").isEmpty, "\(step): the staging tmpfs is left mounted")
            }
            XCTAssertEqual(r.stdout, "", "\(step): no id printed")
            if step == "take.frozen" || step == "take.dumped" {
                // crsnap's own freeze, with no CRIU attached: left frozen
                // until the monitor's watchdog (3 s) notices.
                XCTAssertEqual(c.freezerState, "FROZEN", "\(step): crsnap died with the cgroup frozen")
            }
            if Self.frozenSteps.contains(step) {
                // The watchdog: CRIU resumes the tasks when its peer vanishes,
                // the monitor thaws a cgroup left frozen; no command needed.
                XCTAssertTrue(waitFor(10) { c.freezerState == "THAWED" }, "\(step): still frozen 10 s after crsnap died")
            }
            let byRepair = i % 2 == 0
            try recover(c, byRepair: byRepair, step)
            var after = try listed(c)
            if !byRepair { after.removeLast() }  // the take that recovered
            if step == "take.renamed" {
                XCTAssertEqual(after.count, before.count + 1, "\(step): the complete snapshot is kept")
            } else {
                XCTAssertEqual(after, before, "\(step): no incomplete snapshot is listed")
            }
            try assertHealthy(c, "after kill at \(step)")
            XCTAssertEqual(c.namespacePids, pids, "\(step): the same tasks run")
        }
        // Snapshots taken around the kills still roll back.
        let last = try listed(c).last!
        try crsnapOK(["rollback", last])
        try assertHealthy(c, "rollback after the kills")
    }

    static let rollbackSteps = ["rollback.verified", "rollback.killed", "rollback.aside", "rollback.cloned",
                                "rollback.restore", "rollback.restoring", "rollback.restored"]

    func testKillAtEveryRollbackStep() throws {
        let c = try startCounter("it-killrb")
        let pids = c.namespacePids
        for (i, step) in Self.rollbackSteps.enumerated() {
            let id = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
            let snapLast = counterLines(c.snapshotWorkloadLog(Int(id.split(separator: "@").last!)!)).last ?? 0
            usleep(400_000)
            let fault = step.contains(":") ? step : "kill:\(step)"
            let r = try crsnap(["rollback", id], env: ["CRSNAP_FAULT": fault])
            XCTAssertEqual(r.status, 128 + SIGKILL, "\(step): crsnap was killed: \(r.stderr)")
            try recover(c, byRepair: i % 2 == 0, step)
            try assertHealthy(c, "after kill at \(step)")
            XCTAssertEqual(c.namespacePids, pids, "\(step): pids inside the container")
            // The old state runs on (killed before the tree was stopped) or the
            // new one does (the rollback was finished): the log says which.
            let lines = counterLines(c.workloadLog)
            if step == "rollback.verified" {
                XCTAssertGreaterThan(lines.count, snapLast + 3, "\(step): the old state runs on")
            }
        }
    }

    func testKillDuringDeleteIsFinished() throws {
        let c = try startCounter("it-killdel")
        try crsnapOK(["take", c.name])
        try crsnapOK(["take", c.name])
        let r = try crsnap(["delete", "\(c.name)@1"], env: ["CRSNAP_FAULT": "kill:delete.unlisted"])
        XCTAssertEqual(r.status, 128 + SIGKILL, r.stderr)
        XCTAssertEqual(try listed(c), ["\(c.name)@2"], "a half-deleted snapshot is not listed")
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(c.dir)/journal.json"))
        // The next command on the container finishes the delete.
        try crsnapOK(["take", c.name])
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(c.dir)/snapshots/1"))
        try assertHealthy(c, "after a kill inside delete")
    }

    func testKillDuringPruneIsFinished() throws {
        let c = try startCounter("it-killprune")
        for _ in 1...3 { try crsnapOK(["take", c.name]) }
        let r = try crsnap(["prune", c.name, "--keep-last", "1"], env: ["CRSNAP_FAULT": "kill:delete.unlisted"])
        XCTAssertEqual(r.status, 128 + SIGKILL, r.stderr)
        let left = try listed(c)
        XCTAssertEqual(left.last, "\(c.name)@3", "the newest is kept")
        XCTAssertLessThan(left.count, 3, "the snapshot being deleted is no longer listed")
        // The next command finishes that delete; a second prune the rest.
        try crsnapOK(["prune", c.name, "--keep-last", "1"])
        XCTAssertEqual(try listed(c), ["\(c.name)@3"])
        try assertHealthy(c, "after a kill inside prune")
    }

    /// A stopped container whose rollback was interrupted: doctor --repair
    /// finishes it (an idle monitor restores the tree).
    func testInterruptedRollbackOfStoppedContainerIsFinished() throws {
        let c = try startCounter("it-killstop")
        let id = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        try crsnapOK(["stop", c.name])
        let r = try crsnap(["rollback", id], env: ["CRSNAP_FAULT": "kill:rollback.cloned"])
        XCTAssertEqual(r.status, 128 + SIGKILL, r.stderr)
        let repair = try crsnap(["doctor", "--repair", c.name])
        XCTAssertEqual(repair.status, 0, repair.stderr)
        XCTAssertTrue(repair.stderr.contains("finished"), repair.stderr)
        try assertHealthy(c, "after repair of an interrupted rollback of a stopped container")
    }

    /// Test hooks are off unless CRSNAP_TEST_HOOKS=1: CRSNAP_FAULT alone does nothing.
    func testFaultHooksNeedTheSwitch() throws {
        let c = try startCounter("it-hooks")
        let r = try crsnap(["take", c.name], env: ["CRSNAP_FAULT": "kill:take.post-dump", "CRSNAP_TEST_HOOKS": "0"])
        XCTAssertEqual(r.status, 0, "the fault was not honoured: \(r.stderr)")
        XCTAssertEqual(try listed(c).count, 1)
    }
}
