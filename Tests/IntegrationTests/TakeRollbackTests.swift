import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// take/rollback cycles on a workload whose memory must agree with its files:
/// a counter in memory, appended and fsync'ed to a log each step; a /tmp file
/// closed and reopened each step; an unlinked open file, an O_TMPFILE file, a
/// file whose other hard link remains; a child process.
final class TakeRollbackTests: XCTestCase {
    var started: [String] = []

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        for name in started { _ = try? crsnap(["rm", "--force", name]) }
    }

    func startWorkload(_ prefix: String, rootfs: Bool, unlinkedMiB: Int = 8) throws -> TestContainer {
        let name = uniqueName(prefix)
        var args = ["run", name, "--env", "UNLINKED_MIB=\(unlinkedMiB)"]
        if rootfs {
            guard let r = Env.rootfs else {
                XCTFail("CRSNAP_TEST_ROOTFS is not set (run through Scripts/testenv)")
                throw XCTSkip("no test rootfs")
            }
            args += ["--rootfs", r]
        }
        try crsnapOK(args + ["--", "python3", "-c", workloadSource])
        started.append(name)
        let c = TestContainer(name: name, overlay: !rootfs)
        XCTAssertTrue(waitFor(30) { counterLines(c.workloadLog).count >= 5 }, "workload in \(name) did not start: \(try! crsnap(["logs", name]).stdout)")
        return c
    }

    /// The log is 1, 2, ..., n: no gap (files behind memory) and no duplicate
    /// (files ahead of memory).
    func assertConsecutive(_ lines: [Int], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        for (i, v) in lines.enumerated() where v != i + 1 {
            XCTFail("\(what): line \(i + 1) holds \(v) (gap or duplicate); around it: \(lines[max(0, i - 3)..<min(lines.count, i + 3)])", file: file, line: line)
            return
        }
    }

    func assertNoWorkloadErrors(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let logs = try crsnap(["logs", name]).stdout
        let errors = logs.split(separator: "\n").filter { $0.hasPrefix("ERR") }
        XCTAssertTrue(errors.isEmpty, "workload reported: \(errors.prefix(5).joined(separator: "; "))", file: file, line: line)
        XCTAssertFalse(logs.contains("Traceback"), "workload crashed: \(logs.suffix(800))", file: file, line: line)
    }

    func cycles(rootfs: Bool) throws {
        let c = try startWorkload(rootfs ? "it-sub" : "it-ovl", rootfs: rootfs)
        let pidsBefore = c.namespacePids
        XCTAssertEqual(pidsBefore.count, 2, "init and its child")
        var taken: [(id: String, number: Int, last: Int)] = []
        for cycle in 1...20 {
            usleep(UInt32.random(in: 150_000...350_000))
            let id = try crsnapOK(["take", c.name, "--tag", "cycle\(cycle)"]).trimmingCharacters(in: .whitespacesAndNewlines)
            let number = Int(id.split(separator: "@").last!)!
            XCTAssertEqual(id, "\(c.name)@\(number)")
            // The snapshot's log is what the files said at the frozen instant.
            let snapLog = counterLines(c.snapshotWorkloadLog(number))
            XCTAssertFalse(snapLog.isEmpty, "snapshot \(id) has the workload's log")
            assertConsecutive(snapLog, "log in snapshot \(id)")
            taken.append((id, number, snapLog.last ?? 0))

            usleep(300_000)
            XCTAssertGreaterThan(counterLines(c.workloadLog).last ?? 0, taken.last!.last, "the workload ran on after take")
            // Every fifth cycle goes back to an older snapshot than the newest.
            let target = cycle % 5 == 0 && taken.count >= 3 ? taken[taken.count - 3] : taken.last!
            try crsnapOK(["rollback", target.id])
            // After the rollback the files start from the snapshot and the
            // restored memory carries on from the same value.
            XCTAssertTrue(waitFor(15) { (counterLines(c.workloadLog).last ?? 0) > target.last + 5 },
                          "workload did not carry on after rollback to \(target.id)")
            let after = counterLines(c.workloadLog)
            assertConsecutive(after, "log after rollback to \(target.id) (cycle \(cycle))")
            XCTAssertEqual(c.namespacePids, pidsBefore, "pids inside the container after rollback to \(target.id)")
            XCTAssertEqual(c.freezerState, "THAWED")
        }
        // The unlinked, O_TMPFILE and hard-linked files are checked every 10
        // steps by the workload itself; give it a few more checks, then look.
        let last = counterLines(c.workloadLog).last ?? 0
        XCTAssertTrue(waitFor(10) { (counterLines(c.workloadLog).last ?? 0) > last + 25 })
        try assertNoWorkloadErrors(c.name)
        let list = try crsnapOK(["list", c.name, "--json"])
        let rows = try JSONSerialization.jsonObject(with: Data(list.utf8)) as! [[String: Any]]
        XCTAssertEqual(rows.filter { $0["type"] as? String == "single" }.count, 20, "20 takes listed")
        XCTAssertEqual(rows.filter { $0["type"] as? String == "pre-rollback" }.count, 20, "each rollback kept what it replaced")
        // The unlinked file must not have become visible in the tree.
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "\(c.filesDir)/var/lib/crsnap-workload")) ?? []
        XCTAssertEqual(Set(names), ["log", "h2"], "no leftovers (link_remap, ghost files) in the container's files")
    }

    func testCyclesOverlayRoot() throws {
        try cycles(rootfs: false)
    }

    func testCyclesSubvolumeRoot() throws {
        try cycles(rootfs: true)
    }

    func testLargeUnlinkedFileSurvives() throws {
        let c = try startWorkload("it-big", rootfs: false, unlinkedMiB: 256)
        let id = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        let last = counterLines(c.snapshotWorkloadLog(1)).last ?? 0
        usleep(500_000)
        try crsnapOK(["rollback", id])
        // The workload re-hashes the 256 MiB unlinked file every 10 steps.
        XCTAssertTrue(waitFor(60) { (counterLines(c.workloadLog).last ?? 0) > last + 30 }, "workload carried on")
        assertConsecutive(counterLines(c.workloadLog), "log after rollback")
        try assertNoWorkloadErrors(c.name)
    }

    func testFailedFsSnapshotLeavesNoSnapshotAndContainerRunning() throws {
        let c = try startWorkload("it-fault", rootfs: false)
        try crsnapOK(["take", c.name])
        let before = storeFingerprint([c.name])
        let r = try crsnap(["take", c.name], env: ["CRSNAP_FAULT": "take.fs-snapshot"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("take.fs-snapshot"), "error names the failed step: \(r.stderr)")
        XCTAssertEqual(r.stdout, "", "no id printed")
        XCTAssertEqual(c.freezerState, "THAWED", "the container is not left frozen")
        let list = try crsnapOK(["list", c.name])
        XCTAssertEqual(list.split(separator: "\n").count, 2, "only the first snapshot is listed:\n\(list)")
        XCTAssertEqual(storeFingerprint([c.name]), before, "the store is as it was")
        let n = counterLines(c.workloadLog).last ?? 0
        XCTAssertTrue(waitFor(5) { (counterLines(c.workloadLog).last ?? 0) > n + 5 }, "the workload keeps running")
        // The next take works and gets the next number.
        XCTAssertEqual(try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines), "\(c.name)@2")
    }

    func testFailedRestoreComesBackToThePreRollbackState() throws {
        let c = try startWorkload("it-rfault", rootfs: false)
        let id = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        let snapLast = counterLines(c.snapshotWorkloadLog(1)).last ?? 0
        usleep(400_000)
        let r = try crsnap(["rollback", id], env: ["CRSNAP_FAULT": "rollback.restore"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("rollback.restore"), r.stderr)
        XCTAssertTrue(r.stderr.contains("\(c.name)@2"), "names the pre-rollback snapshot it went back to: \(r.stderr)")
        // The container runs the state the rollback replaced: its files run
        // past the snapshot, its memory agrees with them, and it carries on.
        let pre = counterLines(c.snapshotWorkloadLog(2)).last ?? 0
        XCTAssertGreaterThan(pre, snapLast + 3, "pre-rollback files are the later ones")
        XCTAssertTrue(waitFor(10) { (counterLines(c.workloadLog).last ?? 0) > pre + 5 }, "running again after the failed rollback")
        assertConsecutive(counterLines(c.workloadLog), "log after the failed rollback")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(c.dir)/fs.prev"), "no volume left aside")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(c.dir)/journal.json"))
        // A rollback after the failure works.
        try crsnapOK(["rollback", id])
        XCTAssertTrue(waitFor(10) { (counterLines(c.workloadLog).last ?? 0) > snapLast + 5 })
        assertConsecutive(counterLines(c.workloadLog), "log after the second rollback")
        try assertNoWorkloadErrors(c.name)
    }

    func testExecLogsPsStop() throws {
        let c = try startWorkload("it-exec", rootfs: true)
        let r = try crsnap(["exec", c.name, "--", "cat", "/tmp/state"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertNotNil(Int(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), "the container's /tmp/state: \(r.stdout)")
        XCTAssertEqual(try crsnap(["exec", c.name, "--", "sh", "-c", "exit 7"]).status, 7)
        XCTAssertEqual(try crsnap(["exec", c.name, "--", "hostname"]).stdout, "\(c.name)\n")
        XCTAssertTrue(try crsnapOK(["logs", c.name]).contains("start pid 1 child 2"))
        XCTAssertTrue(try crsnapOK(["ps"]).contains(where: { _ in true }))
        let ps = try crsnapOK(["ps", "--json"])
        let rows = try JSONSerialization.jsonObject(with: Data(ps.utf8)) as! [[String: Any]]
        let row = rows.first { $0["name"] as? String == c.name }
        XCTAssertEqual(row?["state"] as? String, "running")
        XCTAssertEqual(row?["backend"] as? String, "btrfs/subvolume")
        try crsnapOK(["stop", c.name])
        XCTAssertTrue(c.cgroupProcs.isEmpty, "no task left after stop")
        XCTAssertEqual(try crsnap(["exec", c.name, "--", "true"]).status, 4, "exec on a stopped container is a conflict")
        try crsnapOK(["rm", c.name])
        XCTAssertFalse(FileManager.default.fileExists(atPath: c.dir))
        started.removeAll { $0 == c.name }
    }

    func testTakeJSONFields() throws {
        let c = try startWorkload("it-json", rootfs: false)
        let out = try crsnapOK(["take", c.name, "--tag", "before-upgrade", "--json"])
        let obj = try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any]
        XCTAssertEqual(obj["id"] as? String, "\(c.name)@1")
        XCTAssertEqual(obj["container"] as? String, c.name)
        XCTAssertEqual(obj["tag"] as? String, "before-upgrade")
        XCTAssertNotNil(obj["created"] as? String)
        let stats = obj["stats"] as! [String: Any]
        for key in ["frozen_ms", "fs_snapshot_ms", "dump_ms", "images_bytes"] {
            XCTAssertNotNil(stats[key] as? NSNumber, "stats.\(key)")
        }
        XCTAssertGreaterThan((stats["frozen_ms"] as! NSNumber).doubleValue, 0)
        XCTAssertGreaterThan((stats["images_bytes"] as! NSNumber).intValue, 1 << 20, "the 8 MiB ghost file is in the images")
        let list = try crsnapOK(["list", c.name, "--json"])
        let manifests = try JSONSerialization.jsonObject(with: Data(list.utf8)) as! [[String: Any]]
        XCTAssertEqual(manifests.first?["tag"] as? String, "before-upgrade")
    }
}
