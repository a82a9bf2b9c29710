import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// verify --restore-test and guard --test: a snapshot restored into a
/// throwaway container with its own namespaces, watched, then removed; the
/// live container and the snapshot untouched, no clone, mount or cgroup left.
final class RestoreTestTests: XCTestCase {
    var cname = ""
    var hostDir = ""

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        if !cname.isEmpty { _ = try? crsnap(["rm", "--force", cname]) }
        if !hostDir.isEmpty { try? FileManager.default.removeItem(atPath: hostDir) }
    }

    /// Listens on 127.0.0.1:PORT, holds /vol/held open, and every 50 ms
    /// appends its network namespace's inode to /vol/out and a count to
    /// /var/lib/rt/log. With "strict" it exits 3 when its network namespace
    /// is not the one it started in.
    static let service = """
        import os, socket, sys, time
        port, strict = int(sys.argv[1]), sys.argv[2] == "strict"
        os.makedirs("/var/lib/rt", exist_ok=True)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(4)
        held = open("/vol/held", "rb")
        net = os.stat("/proc/self/ns/net").st_ino
        n = 0
        while True:
            now = os.stat("/proc/self/ns/net").st_ino
            if strict and now != net:
                print("network namespace changed", flush=True)
                sys.exit(3)
            with open("/vol/out", "a") as f:
                f.write("%d\\n" % now)
            n += 1
            with open("/var/lib/rt/log", "a") as f:
                f.write("%d\\n" % n)
            time.sleep(0.05)
        """

    func start(_ prefix: String, strict: Bool) throws -> (TestContainer, Int) {
        cname = uniqueName(prefix)
        hostDir = "/var/tmp/\(cname)-vol"
        try FileManager.default.createDirectory(atPath: hostDir, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: "\(hostDir)/held", contents: Data("x".utf8))
        let port = freeLoopbackPort()
        try crsnapOK(["run", cname, "--volume", "\(hostDir):/vol", "--", "python3", "-c", Self.service, "\(port)",
                      strict ? "strict" : "lax"])
        let c = TestContainer(name: cname, overlay: true)
        XCTAssertTrue(waitFor(30) { counterLines("\(c.filesDir)/var/lib/rt/log").count >= 3 },
                      "the service did not start: \((try? crsnap(["logs", cname]).stdout) ?? "")")
        return (c, port)
    }

    /// What a restore test must leave as it found: the container's
    /// directory entries, mounts, crsnap cgroups and subvolumes.
    func traces(_ c: TestContainer) -> [String] {
        let entries = ((try? FileManager.default.contentsOfDirectory(atPath: c.dir)) ?? []).filter { !$0.hasSuffix("log") }
        let cgroups = cgroupRoots.flatMap { root in
            ((try? FileManager.default.contentsOfDirectory(atPath: "\(root)/crsnap")) ?? []).filter { $0.contains(cname) }
        }
        let listing = (try? runProgram("/usr/bin/btrfs", ["subvolume", "list", "-o", Env.store!]).stdout) ?? ""
        var subvolumes: [String] = []
        for line in listing.split(separator: "\n") where line.contains(cname) {
            // "ID 257 gen 12 top level 5 path P": the path (generations move on)
            if let at = line.range(of: " path ") { subvolumes.append(String(line[at.upperBound...])) }
        }
        return entries.sorted() + mountsBelow(c.dir) + cgroups.sorted() + subvolumes.sorted()
    }

    /// The snapshot restores beside the live container, which listens on the
    /// same port (own network namespace), writes nothing into the host's
    /// volume directory (an overlay took the writes), and everything is gone
    /// afterwards; the live service never stopped.
    func testARestoreTestRunsBesideTheLiveContainerAndLeavesNoTrace() throws {
        let (c, port) = try start("it-rtest", strict: false)
        let id = try crsnapOK(["take", cname]).trimmingCharacters(in: .whitespacesAndNewlines)
        let live = c.cgroupProcs
        let liveNet = try String(contentsOfFile: "\(hostDir)/out", encoding: .utf8).split(separator: "\n").last.map(String.init)
        let before = traces(c)
        let logBefore = counterLines("\(c.filesDir)/var/lib/rt/log").count

        let r = try crsnap(["verify", id, "--restore-test", "--for", "1.5", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr + r.stdout)
        let test = jsonObject(r.stdout)["restore_test"] as? [String: Any] ?? [:]
        XCTAssertEqual(test["ok"] as? Bool, true, "\(r.stdout)")
        XCTAssertEqual(test["tasks"] as? Int, 1, "\(test)")
        XCTAssertEqual((test["ended"] as? [String])?.count, 0, "\(test)")
        XCTAssertGreaterThanOrEqual(test["watched_ms"] as? Double ?? 0, 1_400)

        // Untouched: the same live processes, still writing; the host's
        // directory got lines from the live container's network namespace
        // only (the restored one ran in another, its writes in an overlay).
        XCTAssertEqual(c.cgroupProcs, live)
        XCTAssertTrue(waitFor(5) { counterLines("\(c.filesDir)/var/lib/rt/log").count > logBefore + 10 })
        let nets = Set(try String(contentsOfFile: "\(hostDir)/out", encoding: .utf8).split(separator: "\n").map(String.init))
        XCTAssertEqual(nets, Set([liveNet].compactMap { $0 }), "the throwaway wrote into the host's volume directory")
        XCTAssertEqual(traces(c), before, "the restore test left something behind")
        XCTAssertEqual(try crsnap(["verify", id]).status, 0, "the snapshot was changed")
        // The live service still holds its port.
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(probe) }
        let connected = onLoopback(probe, port: port) { connect($0, $1, $2) }
        XCTAssertEqual(connected, 0, "the live service no longer listens")

        // A snapshot that cannot be restored: the open file it needs from a
        // volume that is not snapshotted is gone. The test says so; nothing
        // is left, and the live container runs on.
        try FileManager.default.removeItem(atPath: "\(hostDir)/held")
        let bad = try crsnap(["verify", id, "--restore-test", "--json"])
        XCTAssertEqual(bad.status, 1, bad.stderr)
        let failed = jsonObject(bad.stdout)["restore_test"] as? [String: Any] ?? [:]
        XCTAssertEqual(failed["ok"] as? Bool, false)
        XCTAssertTrue((failed["problem"] as? String ?? "").contains("held"), "\(failed)")
        XCTAssertTrue(bad.stderr.contains("restore test of \(id) failed"), bad.stderr)
        XCTAssertEqual(traces(c), before)
        XCTAssertEqual(c.cgroupProcs, live)
    }

    /// guard --test: a pre snapshot whose restored service exits (it notices
    /// it is in another network namespace) stops the guard before the
    /// command; the pre snapshot is deleted again and nothing is left. A
    /// service that stays up passes, and the guarded command runs.
    func testGuardTestRunsTheCommandOnlyAfterThePreSnapshotRestores() throws {
        let (c, _) = try start("it-rtguard", strict: true)
        let marker = "/var/tmp/\(cname).ran"
        defer { unlink(marker) }
        let before = try crsnapOK(["list", cname, "--json"])
        let r = try crsnap(["guard", cname, "--test", "--", "/usr/bin/touch", marker])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("restore test") && r.stderr.contains("exited with status 3"), r.stderr)
        XCTAssertTrue(r.stderr.contains("network namespace changed"), "the init's last words: \(r.stderr)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker), "the command ran")
        XCTAssertEqual(try crsnapOK(["list", cname, "--json"]), before, "the pre snapshot was kept")
        XCTAssertFalse(traces(c).contains { $0.contains("restore-test") })
        XCTAssertFalse(c.cgroupProcs.isEmpty)

        _ = try crsnap(["rm", "--force", cname])
        try? FileManager.default.removeItem(atPath: hostDir)
        let (_, _) = try start("it-rtguard-ok", strict: false)
        let ok = try crsnap(["guard", cname, "--test", "--json", "--", "/usr/bin/touch", marker])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: marker))
        let outcome = jsonObject(ok.stdout)
        XCTAssertEqual((outcome["restore_test"] as? [String: Any])?["ok"] as? Bool, true, ok.stdout)
        XCTAssertNotNil(outcome["post"] as? String)
    }

    /// crsnap killed in the middle of a restore test: the restored tree dies
    /// with it (its pid namespace ends), and the next operation on the
    /// container removes the clones and the cgroup it left.
    func testAKilledRestoreTestLeavesNoProcessAndTheNextOperationCleansUp() throws {
        let (c, _) = try start("it-rtkill", strict: false)
        let id = try crsnapOK(["take", cname]).trimmingCharacters(in: .whitespacesAndNewlines)
        let before = traces(c)
        let live = c.cgroupProcs
        let cgroup = c.cgroupDir.map { $0 + ".restore-test" } ?? "?"
        var restored: [pid_t] = []
        let r = try runProgram(Env.binary, ["verify", id, "--restore-test", "--for", "60"],
                               env: ["CRSNAP_STORE": Env.store!]) { pid in
            XCTAssertTrue(waitFor(30) {
                restored = ((try? String(contentsOfFile: "\(cgroup)/cgroup.procs", encoding: .utf8)) ?? "")
                    .split(separator: "\n").compactMap { pid_t($0) }
                return !restored.isEmpty
            }, "the restore test did not bring a tree up in \(cgroup)")
            if pid > 1 { kill(pid, SIGKILL) }
        }
        XCTAssertEqual(r.status, 128 + SIGKILL)
        XCTAssertFalse(restored.isEmpty)
        XCTAssertTrue(waitFor(10) { restored.allSatisfy { kill($0, 0) != 0 } }, "restored tasks outlived the test: \(restored)")
        XCTAssertEqual(c.cgroupProcs, live, "the live container was touched")
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(c.dir)/restore-test"), "nothing left to clean up?")

        let next = try crsnap(["take", cname])
        XCTAssertEqual(next.status, 0, next.stderr)
        XCTAssertTrue(next.stderr.contains("interrupted restore test"), next.stderr)
        let after = traces(c).filter { !$0.contains("snapshots/2") }
        XCTAssertEqual(after, before)
        XCTAssertFalse(FileManager.default.fileExists(atPath: cgroup))
    }
}
