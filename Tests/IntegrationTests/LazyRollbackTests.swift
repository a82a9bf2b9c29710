import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// `rollback --lazy`: CRIU restores the processes with their private memory
/// left to its lazy-pages daemon (userfaultfd), which brings pages back as
/// they are touched and the rest in the background. The result must be the
/// eager one: memory and files agree, every page as it was taken.
final class LazyRollbackTests: ReliabilityCase {
    /// Pages CRIU left to the daemon, summed over the restored tasks
    /// ("nr_lazy: N" in its restore log, in the monitor's work directory).
    func lazyPages(_ c: TestContainer) throws -> Int {
        let log = try String(contentsOfFile: "\(c.dir)/lazy-pages/restore.log", encoding: .utf8)
        return log.split(separator: "\n").compactMap { line -> Int? in
            guard let r = line.range(of: "nr_lazy:") else { return nil }
            return Int(line[r.upperBound...].trimmingCharacters(in: .whitespaces))
        }.reduce(0, +)
    }

    func testLazyRollbackBringsBackMemoryAndFiles() throws {
        // 64 MiB that the workload checks 4 MiB at a time, every 64 KiB different.
        let c = try startCounter("it-lazy", memoryMiB: 64)
        let id = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        let at = counterLines(c.snapshotWorkloadLog(1)).last ?? 0
        XCTAssertTrue(waitFor(10) { (counterLines(c.workloadLog).last ?? 0) > at + 10 }, "the workload runs on")
        let pids = c.namespacePids

        let out = try crsnapOK(["rollback", "--lazy", "--json", id])
        let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], out)
        let stats = (o["stats"] as? [String: Any] ?? [:]).compactMapValues { ($0 as? NSNumber)?.doubleValue }
        XCTAssertGreaterThan(stats["lazy_pages_ms"] ?? 0, 0, "the daemon's time is reported: \(stats)")
        XCTAssertGreaterThanOrEqual(try lazyPages(c), 64 * 256 / 2, "CRIU left the workload's memory to the daemon")
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(c.dir)/lazy-pages/lazy-pages.log"), "the daemon's log is kept")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(c.dir)/snapshots/1/images/lazy-pages.socket"),
                       "the daemon's socket is not among the images")
        XCTAssertEqual(c.namespacePids, pids, "the same tasks, with their pids")
        // The log goes on from the snapshot's last line: memory and files agree.
        XCTAssertTrue(waitFor(10) { counterLines(c.workloadLog).count > at + 20 }, "the workload runs on after the rollback")
        XCTAssertEqual(Array(counterLines(c.workloadLog).prefix(at + 1)).last, at + 1, "the counter continued from the snapshot")
        try assertHealthy(c, "after a lazy rollback")

        // resume --lazy brings a stopped container back the same way.
        try crsnapOK(["take", "--stop", c.name])
        try crsnapOK(["resume", "--lazy", c.name])
        try assertHealthy(c, "after resume --lazy")
    }

    /// crsnap killed while the monitor restores lazily (the restore or the
    /// daemon's filling, whichever it is in 150 ms after the request): the
    /// monitor goes on to the end, and the next command finishes the rollback.
    func testCrsnapKilledInsideALazyRollback() throws {
        let c = try startCounter("it-lazy-crash", memoryMiB: 256)
        let id = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        let pids = c.namespacePids
        let r = try crsnap(["rollback", "--lazy", id], env: ["CRSNAP_FAULT": "killafter=150:rollback.restoring"])
        XCTAssertEqual(r.status, 128 + SIGKILL, "crsnap was killed: \(r.stderr)")
        let repair = try crsnap(["doctor", "--repair", c.name])
        XCTAssertEqual(repair.status, 0, repair.stderr)
        try assertHealthy(c, "after crsnap was killed inside a lazy rollback")
        XCTAssertEqual(c.namespacePids, pids)
    }

    /// The daemon dies (SIGKILLed by the monitor, a test switch) before all
    /// the memory is back: the tree it served must not run on with pages
    /// the kernel would now fill with zeros. The rollback fails naming the
    /// daemon, and the state from before the rollback comes back (eagerly).
    func testADaemonThatDiesBringsBackThePreRollbackState() throws {
        let c = try startCounter("it-lazy-killed", memoryMiB: 128,
                                 env: ["CRSNAP_FAULT": "monitor.lazy-pages-killed", "CRSNAP_TEST_HOOKS": "1"])
        let id = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        let at = counterLines(c.snapshotWorkloadLog(1)).last ?? 0
        XCTAssertTrue(waitFor(10) { (counterLines(c.workloadLog).last ?? 0) > at + 10 }, "the workload runs on")

        let r = try crsnap(["rollback", "--lazy", id])
        XCTAssertEqual(r.status, 1, r.stderr)
        for part in ["rollback to \(id) failed", "lazy-pages daemon", "killed by signal 9",
                     "before all of the restored memory was back", "back in the state from before the rollback"] {
            XCTAssertTrue(r.stderr.contains(part), "rollback's error says \"\(part)\": \(r.stderr)")
        }
        let ids = try listed(c)
        XCTAssertEqual(ids.count, 2, "the pre-rollback snapshot is kept: \(ids)")
        let pre = try XCTUnwrap(Int(ids.last?.split(separator: "@").last ?? ""))
        let preLast = counterLines(c.snapshotWorkloadLog(pre)).last ?? 0
        XCTAssertGreaterThan(preLast, at + 10)
        try assertHealthy(c, "after the lazy-pages daemon died")
        XCTAssertGreaterThanOrEqual(counterLines(c.workloadLog).count, preLast, "the state from before the rollback runs on, not \(id)")
        // An eager rollback (the monitor keeps its switch for lazy ones) works.
        try crsnapOK(["rollback", id])
        try assertHealthy(c, "an eager rollback after that")
    }
}
