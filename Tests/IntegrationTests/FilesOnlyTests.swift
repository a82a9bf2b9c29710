import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// take --fs-only and --fallback fs-only: snapshots of the files alone, and
/// rollbacks to them that start the container's command afresh.
final class FilesOnlyTests: XCTestCase {
    var started: [String] = []

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        for name in started { _ = try? crsnap(["rm", "--force", name]) }
    }

    /// Notes each start, then a line every 50 ms; with "uffd" it also holds a
    /// userfaultfd, which CRIU cannot dump.
    static let workload = """
        import os, sys, time, ctypes
        os.makedirs('/var/lib/fsonly', exist_ok=True)
        if len(sys.argv) > 1 and sys.argv[1] == 'uffd':
            assert ctypes.CDLL(None, use_errno=True).syscall(323, 0) >= 0
        log = open('/var/lib/fsonly/log', 'a', buffering=1)
        log.write('start\\n')
        n = 0
        while True:
            n += 1
            log.write('%d\\n' % n)
            time.sleep(0.05)
        """

    func start(_ prefix: String, _ args: [String] = []) throws -> TestContainer {
        let name = uniqueName(prefix)
        try crsnapOK(["run", name, "--", "python3", "-c", Self.workload] + args)
        started.append(name)
        let c = TestContainer(name: name, overlay: true)
        XCTAssertTrue(waitFor(30) { self.logLines(c).count >= 3 }, "workload did not start")
        return c
    }

    func logLines(_ c: TestContainer) -> [String] {
        ((try? String(contentsOfFile: "\(c.filesDir)/var/lib/fsonly/log", encoding: .utf8)) ?? "")
            .split(separator: "\n").map(String.init)
    }

    func json(_ text: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] ?? [:]
    }

    func list(_ name: String) throws -> [[String: Any]] {
        try JSONSerialization.jsonObject(with: Data(try crsnapOK(["list", name, "--json"]).utf8)) as? [[String: Any]] ?? []
    }

    func testFilesOnlyTakeAndARollbackThatRestartsTheCommand() throws {
        let c = try start("it-fsonly")
        let take = try json(try crsnapOK(["take", c.name, "--fs-only", "--json"]))
        let id = take["id"] as? String ?? ""
        XCTAssertEqual(take["fs_only"] as? Bool, true)
        XCTAssertEqual((take["criu"] as? [String: Any])?["pages_written"] as? Int, 0, "CRIU took no part")
        XCTAssertGreaterThan((take["stats"] as? [String: Any])?["pause_ms"] as? Double ?? 0, 0, "frozen for the fs snapshot")
        let n = Int(id.split(separator: "@").last ?? "") ?? 0
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: "\(c.dir)/snapshots/\(n)/images"), [], "no images")
        let snapLines = ((try? String(contentsOfFile: "\(c.snapshotFiles(n))/var/lib/fsonly/log", encoding: .utf8)) ?? "")
            .split(separator: "\n").map(String.init)
        XCTAssertGreaterThanOrEqual(snapLines.count, 3)
        let linesAtTake = snapLines.count
        XCTAssertEqual(try list(c.name).first?["fs_only"] as? Bool, true)
        XCTAssertTrue(try crsnapOK(["list", c.name]).contains(" fs-only "), "TYPE fs-only")
        XCTAssertTrue(try crsnapOK(["show", id]).contains("files only"))
        XCTAssertEqual(try json(try crsnapOK(["verify", id, "--json"]))["ok"] as? Bool, true)
        try crsnapOK(["exec", c.name, "--", "sh", "-c", "echo later > /etc/crsnap-fsonly-marker"])
        XCTAssertTrue(waitFor(10) { self.logLines(c).count > linesAtTake + 10 })

        // A script gets a clear refusal, and nothing changes.
        let pids = c.cgroupProcs
        let refused = try crsnap(["rollback", id])
        XCTAssertEqual(refused.status, 64, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("files-only snapshot") && refused.stderr.contains("--yes"), refused.stderr)
        XCTAssertEqual(c.cgroupProcs, pids)
        XCTAssertEqual(try list(c.name).count, 1, "no pre-rollback snapshot was taken")
        let lazy = try crsnap(["rollback", id, "--lazy", "--yes"])
        XCTAssertEqual(lazy.status, 64, lazy.stderr)
        XCTAssertTrue(lazy.stderr.contains("drop --lazy"), lazy.stderr)

        let rb = try json(try crsnapOK(["rollback", id, "--yes", "--json"]))
        XCTAssertEqual(rb["restarted"] as? Bool, true)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(c.filesDir)/etc/crsnap-fsonly-marker"), "files are the snapshot's")
        XCTAssertTrue(waitFor(10) { self.logLines(c).filter { $0 == "start" }.count == 2 && self.logLines(c).count > linesAtTake + 3 })
        let lines = logLines(c)
        XCTAssertEqual(lines.filter { $0 == "start" }.count, 2, "the command started afresh on the snapshot's log")
        XCTAssertEqual(Array(lines.prefix(linesAtTake)), snapLines, "the log is the snapshot's")
        XCTAssertEqual(lines.count > linesAtTake ? lines[linesAtTake] : "", "start", "then the fresh start")
        XCTAssertNotEqual(c.cgroupProcs, pids, "new processes")
        XCTAssertTrue(try crsnapOK(["logs", c.name]).contains("afresh"), "the log says so")

        // The state replaced was checkpointable: undo brings its processes back.
        let pre = rb["pre_rollback"] as? String ?? ""
        XCTAssertEqual(try list(c.name).first { $0["id"] as? String == pre }?["fs_only"] as? Bool, false)
        let undo = try json(try crsnapOK(["rollback", "--undo", c.name, "--json"]))
        XCTAssertEqual(undo["restarted"] as? Bool, false)
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(c.filesDir)/etc/crsnap-fsonly-marker"))
    }

    func testFallbackTakesTheFilesWhenTheCheckpointFails() throws {
        let c = try start("it-fsfallback", ["uffd"])
        let plain = try crsnap(["take", c.name])
        XCTAssertEqual(plain.status, 1, plain.stderr)
        XCTAssertTrue(plain.stderr.contains("userfaultfd"), plain.stderr)

        let r = try crsnap(["take", c.name, "--fallback", "fs-only", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("taking a files-only snapshot instead"), r.stderr)
        let take = try json(r.stdout)
        XCTAssertEqual(take["fs_only"] as? Bool, true)
        XCTAssertTrue((take["fallback_reason"] as? String ?? "").contains("userfaultfd"), "\(take)")
        let id = take["id"] as? String ?? ""
        XCTAssertEqual(try list(c.name).map { $0["fs_only"] as? Bool }, [true])

        // Rolling back: the state replaced cannot be checkpointed either, so
        // its pre-rollback snapshot holds its files.
        let pids = c.cgroupProcs
        let rb = try json(try crsnapOK(["rollback", id, "--yes", "--json"]))
        XCTAssertEqual(rb["restarted"] as? Bool, true)
        let rows = try list(c.name)
        XCTAssertEqual(rows.map { $0["type"] as? String }, ["single", "pre-rollback"])
        XCTAssertEqual(rows.map { $0["fs_only"] as? Bool }, [true, true])
        XCTAssertTrue(try crsnapOK(["list", c.name]).contains("pre-rollback,fs-only"))
        XCTAssertTrue(waitFor(10) { !c.cgroupProcs.isEmpty && c.cgroupProcs != pids }, "the command runs afresh")
    }

    func testBadFilesOnlyInputIsRefused() throws {
        let c = try start("it-fsbad")
        for (args, why) in [
            (["--fallback", "nothing"], "the only fallback is fs-only"),
            (["--fs-only", "--fallback", "fs-only"], "--fs-only takes none"),
            (["--fs-only", "--stop"], "--stop keeps the processes"),
        ] {
            let r = try crsnap(["take", c.name] + args)
            XCTAssertEqual(r.status, 64, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(why), "\(args): \(r.stderr)")
        }
        XCTAssertEqual(try list(c.name).count, 0)
    }
}
