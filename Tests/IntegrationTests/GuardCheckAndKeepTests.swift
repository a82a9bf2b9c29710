import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// guard --check (a health check after the guarded command) and run --keep
/// (paths whose contents survive a rollback).
final class GuardCheckAndKeepTests: XCTestCase {
    var started: [String] = []
    var scratch: String?

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        for name in started { _ = try? crsnap(["rm", "--force", name]) }
        if let scratch { try? FileManager.default.removeItem(atPath: scratch) }
    }

    func listRows(_ name: String) throws -> [[String: Any]] {
        let out = try crsnapOK(["list", name, "--json"])
        return try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [[String: Any]]
    }

    func json(_ text: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
    }

    /// An executable shell script at `path` (host side).
    func script(_ path: String, _ body: String) throws {
        try ("#!/bin/sh\n" + body + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
    }

    /// Whether any process's argv is exactly `argv`.
    func processRuns(_ argv: [String]) -> Bool {
        let want = argv.joined(separator: "\0") + "\0"
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap { Int($0) } ?? []
        return pids.contains { pid in
            (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))).map { String(decoding: $0, as: UTF8.self) } == want
        }
    }

    func testGuardCheckRollsBackABrokenUpgradeAndPassesAGoodOne() throws {
        let name = uniqueName("it-check")
        try crsnapOK(["run", name, "--", "python3", "-c", workloadSource])
        started.append(name)
        let c = TestContainer(name: name, overlay: true)
        XCTAssertTrue(waitFor(30) { counterLines(c.workloadLog).count >= 3 }, "workload did not start")
        scratch = "/tmp/crsnap-check-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: scratch!, withIntermediateDirectories: true)
        let marker = "\(c.dir)/root/etc/crsnap-upgrade"

        // On the host: the "upgrade" succeeds, the check finds it broken.
        try script("\(scratch!)/check-host", "grep -qx good '\(marker)' || { echo 'service broken' >&2; exit 5; }")
        let broken = try crsnap(["guard", name, "--json", "--check", "\(scratch!)/check-host", "--",
                                 "sh", "-c", "echo upgraded; echo bad > '\(marker)'"])
        XCTAssertEqual(broken.status, 5, broken.stderr)
        XCTAssertTrue(broken.stderr.contains("service broken"), "the check's output reaches stderr: \(broken.stderr)")
        XCTAssertTrue(broken.stdout.hasPrefix("upgraded\n"), "stdout is the command's, then the JSON: \(broken.stdout)")
        let o1 = try json(String(broken.stdout.dropFirst("upgraded\n".count)))
        XCTAssertEqual(o1["failed"] as? String, "check")
        XCTAssertEqual(o1["check_status"] as? Int, 5)
        XCTAssertEqual(o1["rolled_back"] as? Bool, true)
        XCTAssertNil(o1["post"] as? String)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(c.filesDir)/etc/crsnap-upgrade"), "the upgrade was rolled back")
        XCTAssertEqual(try listRows(name).map { $0["type"] as? String }, ["pre", "pre-rollback"])

        // Inside: the check runs in the container and finds the upgrade good.
        try crsnapOK(["exec", name, "--", "sh", "-c",
                      "printf '#!/bin/sh\\ngrep -qx good /etc/crsnap-upgrade\\n' > /usr/local/bin/hc && chmod 755 /usr/local/bin/hc"])
        let good = try crsnap(["guard", name, "--inside", "--json", "--check", "hc", "--",
                               "sh", "-c", "echo good > /etc/crsnap-upgrade"])
        XCTAssertEqual(good.status, 0, good.stderr)
        let o2 = try json(good.stdout)
        XCTAssertNil(o2["failed"] as? String)
        XCTAssertEqual(o2["check_status"] as? Int, 0)
        XCTAssertNotNil(o2["post"] as? String)
        XCTAssertEqual(try String(contentsOfFile: "\(c.filesDir)/etc/crsnap-upgrade", encoding: .utf8), "good\n")

        // A check that hangs is killed at --check-timeout and counts as failed.
        try crsnapOK(["exec", name, "--", "sh", "-c",
                      "printf '#!/bin/sh\\nexec sleep 37.25\\n' > /usr/local/bin/hang && chmod 755 /usr/local/bin/hang"])
        let t = Date()
        let hung = try crsnap(["guard", name, "--inside", "--json", "--check", "/usr/local/bin/hang", "--check-timeout", "1.5",
                               "--", "sh", "-c", "echo bad > /etc/crsnap-upgrade"])
        XCTAssertEqual(hung.status, 124, hung.stderr)
        XCTAssertLessThan(Date().timeIntervalSince(t), 30, "the check was not left to run its 37 s")
        let o3 = try json(hung.stdout)
        XCTAssertEqual(o3["check_timed_out"] as? Bool, true)
        XCTAssertEqual(o3["rolled_back"] as? Bool, true)
        XCTAssertEqual(try String(contentsOfFile: "\(c.filesDir)/etc/crsnap-upgrade", encoding: .utf8), "good\n",
                       "rolled back to the pre snapshot, after the good upgrade")
        XCTAssertTrue(waitFor(5) { !self.processRuns(["sleep", "37.25"]) }, "the timed-out check inside the container was killed")
        XCTAssertTrue(waitFor(10) { (counterLines(c.workloadLog).last ?? 0) > 5 }, "the workload runs after the rollbacks")

        // Bad input: refused before the pre snapshot.
        let before = try listRows(name).count
        for (args, why) in [
            (["--check", "/nonexistent/check"], "no such executable on the host"),
            (["--check-timeout", "5"], "--check-timeout needs --check"),
            (["--check", "\(scratch!)/check-host", "--check-timeout", "0"], "invalid --check-timeout"),
            (["--inside", "--check", "bin/hc"], "absolute path or a name"),
            (["--inside", "--check", "no-such-check"], "no such executable inside"),
        ] {
            let r = try crsnap(["guard", name] + args + ["--", "true"])
            XCTAssertEqual(r.status, 64, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(why), "\(args): \(r.stderr)")
        }
        XCTAssertEqual(try listRows(name).count, before, "bad input took no snapshot")
    }

    /// A log opened for appending (as loggers do) and a data file opened
    /// read-write, both under the kept /var/log/app; the counter elsewhere.
    static let keepWorkload = """
        import os, time
        os.makedirs('/var/log/app', exist_ok=True)
        os.makedirs('/var/lib/app', exist_ok=True)
        log = open('/var/log/app/app.log', 'a', buffering=1)
        data = open('/var/log/app/data.bin', 'w+b')
        data.write(b'x' * 100); data.flush()
        n = 0
        while True:
            n += 1
            with open('/var/lib/app/count.tmp', 'w') as f: f.write(str(n))
            os.rename('/var/lib/app/count.tmp', '/var/lib/app/count')
            log.write('line %d\\n' % n)
            time.sleep(0.05)
        """

    func testKeptPathSurvivesRollbackAndTheRestIsRolledBack() throws {
        let name = uniqueName("it-keep")
        try crsnapOK(["run", name, "--keep", "/var/log/app", "--", "python3", "-c", Self.keepWorkload])
        started.append(name)
        let c = TestContainer(name: name, overlay: true)
        let log = "\(c.filesDir)/var/log/app/app.log", count = "\(c.filesDir)/var/lib/app/count"
        func logLines() -> [String] { ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init) }
        func counter() -> Int { Int((try? String(contentsOfFile: count, encoding: .utf8)) ?? "") ?? 0 }
        XCTAssertTrue(waitFor(30) { counter() >= 5 }, "workload did not start")
        let id = try crsnapOK(["take", name]).trimmingCharacters(in: .whitespacesAndNewlines)
        let atTake = counter()
        XCTAssertTrue(waitFor(20) { counter() >= atTake + 20 })

        let shown = try json(try crsnapOK(["show", id, "--json"]))
        XCTAssertEqual(shown["kept"] as? [String], ["/var/log/app"])
        XCTAssertTrue(try crsnapOK(["show", id]).contains("KEPT ACROSS ROLLBACK"))

        let rb = try json(try crsnapOK(["rollback", id, "--json"]))
        let linesAfter = logLines()
        let afterRollback = counter()
        XCTAssertLessThan(afterRollback, atTake + 20, "the counter outside the kept path was rolled back")
        XCTAssertGreaterThanOrEqual(linesAfter.count, atTake + 20, "the log kept the lines written after the snapshot")
        XCTAssertGreaterThan((rb["stats"] as? [String: Any])?["keep_ms"] as? Double ?? 0, 0)
        // The restored process goes on appending to the kept log.
        XCTAssertTrue(waitFor(20) { logLines().count >= linesAfter.count + 10 }, "the restored logger appends")
        let tail = logLines().suffix(5).map { Int($0.split(separator: " ").last ?? "") ?? -1 }
        XCTAssertEqual(tail, tail.sorted(), "the restored logger writes its own numbers in order")

        // The read-write data file under the kept path changes size: CRIU
        // would refuse it after the kill, so the rollback is refused first.
        let id2 = try crsnapOK(["take", name]).trimmingCharacters(in: .whitespacesAndNewlines)
        try crsnapOK(["exec", name, "--", "sh", "-c", "printf yy >> /var/log/app/data.bin"])
        let snapshots = try listRows(name).count
        let pidBefore = c.cgroupProcs
        let refused = try crsnap(["rollback", id2])
        XCTAssertEqual(refused.status, 4, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("/var/log/app/data.bin") && refused.stderr.contains("--keep /var/log/app"),
                      refused.stderr)
        XCTAssertEqual(try listRows(name).count, snapshots, "no pre-rollback snapshot was taken")
        XCTAssertEqual(c.cgroupProcs, pidBefore, "the container runs on, untouched")
    }

    func testKeepBadInputIsRefused() throws {
        for (args, why) in [
            (["--keep", "var/log"], "absolute path"),
            (["--keep", "/"], "absolute path"),
            (["--keep", "/var/../etc"], "absolute path"),
            (["--keep", "/var/log/"], "absolute path"),
            (["--keep", "/proc/x"], "/proc is not part"),
            (["--tmpfs", "/run", "--keep", "/run/app"], "overlaps --tmpfs /run"),
            (["--keep", "/var", "--keep", "/var/log"], "inside --keep /var"),
            (["--keep", "/srv", "--keep", "/srv"], "given twice"),
        ] {
            let name = uniqueName("it-keepbad")
            let r = try crsnap(["run", name] + args + ["--", "true"])
            XCTAssertEqual(r.status, 64, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(why), "\(args): \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(Env.store!)/containers/\(name)"), "\(args) created nothing")
        }
    }
}
