import Foundation
import XCTest

/// The pause a client sees: crsnap freezes the container's cgroup itself,
/// waits for FROZEN in fine steps and hands CRIU a frozen tree, which CRIU
/// then seizes at once instead of sleeping its 100 ms freezer steps.
final class PauseTests: ReliabilityCase {
    /// `take --json` of `c`: the whole object and its stats.
    func take(_ c: TestContainer, extra: [String] = [], env: [String: String] = [:]) throws -> (id: String, stats: [String: Double]) {
        let r = try crsnap(["take", c.name, "--json"] + extra, env: env)
        XCTAssertEqual(r.status, 0, r.stderr)
        let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        let stats = (o["stats"] as? [String: Any] ?? [:]).compactMapValues { ($0 as? NSNumber)?.doubleValue }
        return (try XCTUnwrap(o["id"] as? String), stats)
    }

    /// What every take must show: crsnap's freeze inside its pause, CRIU's
    /// frozen time inside the pause, and CRIU's log saying it found the
    /// cgroup frozen (it logs "freezing processes: N attempts done" only
    /// when it had to freeze the tasks itself).
    func assertCrsnapFroze(_ c: TestContainer, _ t: (id: String, stats: [String: Double]), freezer: String,
                           file: StaticString = #filePath, line: UInt = #line) throws {
        let freezing = try XCTUnwrap(t.stats["freezing_ms"], "freezing_ms in \(t.stats)", file: file, line: line)
        let pause = try XCTUnwrap(t.stats["pause_ms"], "pause_ms in \(t.stats)", file: file, line: line)
        let frozen = try XCTUnwrap(t.stats["frozen_ms"], file: file, line: line)
        XCTAssertGreaterThan(freezing, 0, file: file, line: line)
        XCTAssertGreaterThanOrEqual(pause, freezing + frozen, "the pause holds crsnap's freeze and CRIU's frozen time: \(t.stats)",
                                    file: file, line: line)
        let n = try XCTUnwrap(Int(t.id.split(separator: "@").last ?? ""))
        let log = try String(contentsOfFile: "\(c.dir)/snapshots/\(n)/images/dump.log", encoding: .utf8)
        XCTAssertTrue(log.contains(freezer), "CRIU read the \(freezer) state", file: file, line: line)
        XCTAssertFalse(log.contains("freezing processes:"), "CRIU found the cgroup frozen and did not freeze it itself",
                       file: file, line: line)
    }

    func testTakeFreezesTheContainerItselfAndReportsThePause() throws {
        let c = try startCounter("it-pause")
        let freezer = c.cgroupVersion == 2 ? "cgroup.freeze=1" : "freezer.state=FROZEN"
        var pauses: [Double] = []
        for _ in 1...3 {
            let t = try take(c)
            try assertCrsnapFroze(c, t, freezer: freezer)
            pauses.append(t.stats["pause_ms"] ?? -1)
        }
        print("pause_ms of three takes: \(pauses.map { String(format: "%.1f", $0) })")
        // list shows the pause of each snapshot (the table's rows in order).
        let table = try crsnapOK(["list", c.name]).split(separator: "\n")
        XCTAssertTrue(table.first?.contains("PAUSE(ms)") ?? false, "list has a PAUSE(ms) column: \(table.first ?? "")")
        XCTAssertEqual(table.count, 4, "\(table)")
        for (row, pause) in zip(table.dropFirst(), pauses) {
            XCTAssertTrue(row.split(separator: " ").contains(Substring(String(format: "%.0f", pause))), "\(row) shows \(pause)")
        }
        try assertHealthy(c, "after takes frozen by crsnap")
    }

    /// cgroup v2's freezer (cgroup.freeze, cgroup.events): the same take,
    /// and a rollback whose tasks come back into the v2 cgroup.
    func testCgroupV2Freezer() throws {
        guard cgroupRoots.count > 1 else {
            throw XCTSkip("SKIPPED LOUDLY: no cgroup2 hierarchy is mounted here")
        }
        let c = try startCounter("it-pause-v2", env: ["CRSNAP_FREEZER": "v2"])
        XCTAssertEqual(c.cgroupVersion, 2, "the container's cgroup is a cgroup2 one: \(c.cgroupDir ?? "none")")
        XCTAssertFalse(c.cgroupProcs.isEmpty, "its tasks are in it")
        let pids = c.namespacePids
        let t = try take(c)
        try assertCrsnapFroze(c, t, freezer: "cgroup.freeze=1")
        let rb = try crsnap(["rollback", t.id])
        XCTAssertEqual(rb.status, 0, rb.stderr)
        XCTAssertEqual(c.cgroupVersion, 2)
        XCTAssertEqual(c.namespacePids, pids, "the restored tasks are in the cgroup2 cgroup, with their pids")
        try assertHealthy(c, "after take and rollback on cgroup v2")
    }

    /// A freeze that does not finish (made so by a test hook: the wait never
    /// sees FROZEN) fails the take after --freeze-timeout, thawed at once,
    /// nothing added; bad timeouts are refused before anything happens.
    func testAFreezeThatDoesNotFinishFailsTheTake() throws {
        let c = try startCounter("it-pause-stuck")
        let before = try listed(c)
        let r = try crsnap(["take", c.name, "--freeze-timeout", "0.5"], env: ["CRSNAP_FAULT": "take.freeze-stuck"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("did not all freeze within 0.5 s"), r.stderr)
        XCTAssertTrue(r.stderr.contains("thawed again") && r.stderr.contains("no snapshot was added"), r.stderr)
        XCTAssertEqual(c.freezerState, "THAWED", "thawed by the take itself, not by the watchdog")
        XCTAssertEqual(try listed(c), before)
        for bad in ["0", "-1", "nan", "601", "soon"] {
            let b = try crsnap(["take", c.name, "--freeze-timeout", bad])
            XCTAssertNotEqual(b.status, 0, "--freeze-timeout \(bad)")
            XCTAssertTrue(b.stderr.contains("freeze-timeout"), "--freeze-timeout \(bad): \(b.stderr)")
        }
        XCTAssertEqual(try listed(c), before)
        try assertHealthy(c, "after a freeze that timed out")
    }

    /// Images staged in memory (a tmpfs on the staging images directory)
    /// end up in the store as if CRIU had written them there: the snapshot
    /// verifies and rolls back, and no tmpfs is left; `--stage store`
    /// writes to the store directly; a bad mode is refused.
    func testImagesStagedInMemoryReachTheStore() throws {
        let c = try startCounter("it-pause-stage")
        let staged = try take(c, extra: ["--stage", "memory"])
        XCTAssertNotNil(staged.stats["staging_copy_ms"], "staged in memory: \(staged.stats)")
        XCTAssertEqual(mountsBelow("\(c.dir)/snapshots"), [], "the staging tmpfs is gone")
        let n = try XCTUnwrap(Int(staged.id.split(separator: "@").last ?? ""))
        var images = stat(), dir = stat()
        XCTAssertEqual(stat("\(c.dir)/snapshots/\(n)/images/inventory.img", &images), 0)
        XCTAssertEqual(stat(c.dir, &dir), 0)
        XCTAssertEqual(images.st_dev, dir.st_dev, "the images are on the store's filesystem")
        let direct = try take(c, extra: ["--stage", "store"])
        XCTAssertNil(direct.stats["staging_copy_ms"], "written to the store: \(direct.stats)")
        let before = try listed(c)
        let bad = try crsnap(["take", c.name, "--stage", "ram"])
        XCTAssertEqual(bad.status, 64, bad.stderr)
        XCTAssertTrue(bad.stderr.contains("stage"), bad.stderr)
        XCTAssertEqual(try listed(c), before)
        try crsnapOK(["rollback", staged.id])
        try assertHealthy(c, "after a rollback to images staged in memory")
    }
}
