import FSSnapshot
import Foundation
import XCTest

/// /tmp and /dev/shm as tmpfs: their contents (files closed and reopened
/// later) are captured at the frozen instant and restored.
final class TmpfsTests: XCTestCase {
    var cname = ""

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        if !cname.isEmpty { _ = try? crsnap(["rm", "--force", cname]) }
    }

    static let workload = """
        import os, time
        n = 0
        while True:
            n += 1
            prev = [int(open(p).read()) if os.path.exists(p) else 0 for p in ("/tmp/state", "/dev/shm/state")]
            if prev != [n - 1, n - 1]:
                print(f"ERR step {n}: tmpfs files hold {prev}, memory expects {n - 1}", flush=True)
            for p in ("/tmp/state", "/dev/shm/state"):
                with open(p, "w") as f:
                    f.write(str(n))
            if n % 5 == 0:
                print(f"step {n}", flush=True)
            time.sleep(0.02)
        """

    func steps() throws -> [Int] {
        try crsnap(["logs", cname]).stdout.split(separator: "\n").compactMap {
            $0.hasPrefix("step ") ? Int($0.dropFirst(5)) : nil
        }
    }

    func testTmpfsContentsAreRolledBackWithTheProcesses() throws {
        cname = uniqueName("it-tmpfs")
        try crsnapOK(["run", cname, "--tmpfs", "/tmp", "--tmpfs", "/dev/shm", "--", "python3", "-c", Self.workload])
        XCTAssertTrue(waitFor(20) { (try? self.steps().count) ?? 0 >= 2 }, "workload started")
        let mounts = try crsnapOK(["exec", cname, "--", "cat", "/proc/self/mounts"])
        XCTAssertTrue(mounts.contains("tmpfs /tmp tmpfs"), mounts)
        XCTAssertTrue(mounts.contains("tmpfs /dev/shm tmpfs"), mounts)
        for _ in 1...3 {
            let id = try crsnapOK(["take", cname]).trimmingCharacters(in: .whitespacesAndNewlines)
            let shown = try crsnapOK(["show", id])
            XCTAssertTrue(shown.contains("/tmp  ") && shown.contains("/dev/shm") && shown.contains("contents in the CRIU images"), shown)
            let atTake = Int(try crsnapOK(["exec", cname, "--", "cat", "/tmp/state"])) ?? 0
            usleep(400_000)
            try crsnapOK(["rollback", id])
            let before = try steps().count
            XCTAssertTrue(waitFor(10) { (try? self.steps().count) ?? 0 > before + 3 }, "running after rollback to \(id)")
            XCTAssertGreaterThan(atTake, 0)
        }
        let errors = try crsnap(["logs", cname]).stdout.split(separator: "\n").filter { $0.hasPrefix("ERR") }
        XCTAssertTrue(errors.isEmpty, "tmpfs contents disagreed with memory: \(errors.prefix(3))")
        let bad = try crsnap(["run", "x-\(cname)", "--tmpfs", "relative", "--", "true"])
        XCTAssertEqual(bad.status, 64, bad.stderr)
        XCTAssertEqual(try crsnap(["run", "x-\(cname)", "--tmpfs", "/proc", "--", "true"]).status, 64)
        XCTAssertEqual(try crsnap(["run", "x-\(cname)", "--tmpfs", "/a/../b", "--", "true"]).status, 64)
    }
}

/// --volume: bind mounts from the host, declared external to CRIU; a btrfs
/// subvolume on the store's filesystem is snapshotted in the same instant and
/// rolled back, any other directory is left alone.
final class VolumeTests: XCTestCase {
    func testVolumes() throws {
        try Env.require()
        let cname = uniqueName("it-vol")
        let subvol = "\((Env.store! as NSString).deletingLastPathComponent)/\(cname)-vol"
        let plain = "/var/tmp/\(cname)-plain"
        try Btrfs.createSubvolume(subvol)
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        defer {
            _ = try? crsnap(["rm", "--force", cname])
            try? Btrfs.deleteSubvolume(subvol)
            try? FileManager.default.removeItem(atPath: plain)
        }
        let workload = """
            import os, time
            n = 0
            while True:
                n += 1
                prev = int(open("/data/c").read()) if os.path.exists("/data/c") else 0
                if prev != n - 1:
                    print(f"ERR step {n}: /data/c holds {prev}", flush=True)
                with open("/data/c", "w") as f:
                    f.write(str(n))
                # The plain volume is not rolled back, and CRIU refuses an open
                # file whose size changed: written in place, one size always
                # (a take that froze between truncate and write failed the
                # rollback with "File plain/c has bad size 2 (expect 0)").
                fd = os.open("/plain/c", os.O_WRONLY | os.O_CREAT, 0o644)
                os.pwrite(fd, b"%08d" % n, 0)
                os.close(fd)
                if n % 5 == 0:
                    print(f"step {n}", flush=True)
                time.sleep(0.02)
            """
        try crsnapOK(["run", cname, "--volume", "\(subvol):/data", "--volume", "\(plain):/plain", "--", "python3", "-c", workload])
        XCTAssertTrue(waitFor(20) { ((try? String(contentsOfFile: "\(subvol)/c", encoding: .utf8)).flatMap { Int($0) } ?? 0) > 5 })
        let id = try crsnapOK(["take", cname]).trimmingCharacters(in: .whitespacesAndNewlines)
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(Env.store!)/containers/\(cname)/snapshots/1/manifest.json"))) as! [String: Any]
        let vols = manifest["volumes"] as! [[String: Any]]
        XCTAssertEqual(vols.map { $0["snapshotted"] as? Bool }, [true, false], "the manifest says which volumes were snapshotted")
        let show = try JSONSerialization.jsonObject(with: Data(try crsnapOK(["show", id, "--json"]).utf8)) as! [String: Any]
        let shownVols = (show["volumes"] as? [[String: Any]]) ?? []
        XCTAssertEqual(shownVols.map { $0["mount"] as? String }, ["/data", "/plain"], "\(show)")
        XCTAssertEqual(shownVols.map { $0["snapshotted"] as? Bool }, [true, false], "show says which volumes are rolled back")
        XCTAssertTrue(try crsnapOK(["show", id]).contains("no (not a btrfs subvolume on the store)"))
        let atSnapshot = Int(try String(contentsOfFile: "\(Env.store!)/containers/\(cname)/snapshots/1/volumes/vol0/c", encoding: .utf8)) ?? 0
        XCTAssertGreaterThan(atSnapshot, 0)
        // Files made after the take: rolled back in the subvolume, kept in the plain directory.
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(subvol)/after-take", contents: Data("x".utf8)))
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(plain)/after-take", contents: Data("x".utf8)))
        try crsnapOK(["rollback", id])
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(plain)/after-take"), "a plain directory volume is not rolled back")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(subvol)/after-take"), "a subvolume volume is rolled back")
        XCTAssertTrue(waitFor(10) { ((try? String(contentsOfFile: "\(subvol)/c", encoding: .utf8)).flatMap { Int($0) } ?? 0) > atSnapshot + 5 })
        let logs = try crsnapOK(["logs", cname])
        let afterRestore = logs.components(separatedBy: "restored").last ?? ""
        XCTAssertFalse(afterRestore.contains("ERR"), "the subvolume volume agrees with memory after rollback: \(afterRestore.prefix(300))")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(subvol).crsnap-prev"), "the replaced volume is gone after success")
        XCTAssertEqual(try crsnap(["run", "x-\(cname)", "--volume", "relative:/x", "--", "true"]).status, 64)
        XCTAssertEqual(try crsnap(["run", "x-\(cname)", "--volume", "\(plain):/", "--", "true"]).status, 64)
        XCTAssertEqual(try crsnap(["run", "x-\(cname)", "--volume", "/nonexistent-crsnap:/x", "--", "true"]).status, 64)
        XCTAssertEqual(try crsnap(["run", "x-\(cname)", "--volume", "\(plain)", "--", "true"]).status, 64)
    }
}
