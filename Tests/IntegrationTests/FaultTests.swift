import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Faults a real store cannot be made to produce on demand at one exact step
/// (ENOSPC inside the fs snapshot or the restore), and a freeze nobody
/// attends to: each leaves the container running, thawed and consistent.
final class FaultTests: ReliabilityCase {
    /// ENOSPC (CRSNAP_FAULT=enospc:STEP) while the tasks are frozen for the fs
    /// snapshot, then just before the restore of a rollback.
    func testNoSpaceInTheFsSnapshotAndInTheRestore() throws {
        let c = try startCounter("it-nospace")
        let id = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        let pids = c.namespacePids
        let before = dirFingerprint(c.dir)

        let t = try crsnap(["take", c.name], env: ["CRSNAP_FAULT": "enospc:take.fs-snapshot"])
        XCTAssertEqual(t.status, 1, t.stderr)
        XCTAssertEqual(t.stdout, "", "no id printed")
        for part in ["take \(c.name) failed", "No space left on device", "no snapshot was added; the container runs on"] {
            XCTAssertTrue(t.stderr.contains(part), "take's error says \"\(part)\": \(t.stderr)")
        }
        XCTAssertEqual(dirFingerprint(c.dir), before, "a take that hit ENOSPC changed the store")
        XCTAssertEqual(try listed(c), [id])
        try assertHealthy(c, "after ENOSPC in the fs snapshot")
        XCTAssertEqual(c.namespacePids, pids, "the same tasks run on")

        // The tree is already stopped when the restore fails: crsnap brings
        // back the state from just before the rollback (its pre-rollback
        // snapshot), so memory and files still agree and nothing is lost.
        let r = try crsnap(["rollback", id], env: ["CRSNAP_FAULT": "enospc:rollback.restore"])
        XCTAssertEqual(r.status, 1, r.stderr)
        for part in ["rollback to \(id) failed", "No space left on device", "back in the state from before the rollback"] {
            XCTAssertTrue(r.stderr.contains(part), "rollback's error says \"\(part)\": \(r.stderr)")
        }
        let ids = try listed(c)
        XCTAssertEqual(ids.count, 2, "the pre-rollback snapshot is kept: \(ids)")
        let pre = Int(ids.last!.split(separator: "@").last!)!
        let preLast = counterLines(c.snapshotWorkloadLog(pre)).last ?? 0
        XCTAssertGreaterThan(preLast, counterLines(c.snapshotWorkloadLog(1)).last ?? 0)
        try assertHealthy(c, "after ENOSPC in the restore")
        XCTAssertGreaterThanOrEqual(counterLines(c.workloadLog).count, preLast, "the state from before the rollback runs on, not \(id)")
        XCTAssertEqual(c.namespacePids, pids)

        // And the rollback works once there is room.
        try crsnapOK(["rollback", id])
        try assertHealthy(c, "after the rollback that had room")
    }

    /// A freeze with no CRIU attached and no crsnap to undo it (here: written
    /// by hand): the container's monitor thaws it within a few seconds.
    func testMonitorThawsAFreezeNobodyAttends() throws {
        let c = try startCounter("it-stale-freeze")
        let dirs = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup/freezer/crsnap")) ?? []
        let cg = try XCTUnwrap(dirs.first { $0.hasSuffix(".\(c.name)") }, "the container's freezer cgroup")
        let state = "/sys/fs/cgroup/freezer/crsnap/\(cg)/freezer.state"
        try "FROZEN".write(toFile: state, atomically: false, encoding: .utf8)
        XCTAssertTrue(waitFor(5) { c.freezerState == "FROZEN" }, "the cgroup froze")
        let frozenAt = Date()
        XCTAssertTrue(waitFor(15) { c.freezerState == "THAWED" }, "the monitor thawed the container")
        print("monitor thawed the stale freeze after \(String(format: "%.1f", Date().timeIntervalSince(frozenAt))) s")
        let logs = try crsnapOK(["logs", c.name])
        XCTAssertTrue(logs.contains("watchdog"), "the monitor says so in the container's log: \(logs.suffix(400))")
        try assertHealthy(c, "after the monitor's thaw")
    }
}
