import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// `export --format checkpoint-archive`, read by Debian's checkpointctl (the
/// tool Kubernetes' checkpoint archives are inspected with): it must accept
/// the archive and report the process tree, the checkpoint's size, CRIU's
/// statistics and version that `crsnap show` reports.
final class CheckpointArchiveTests: XCTestCase {
    var container = ""
    var files: [String] = []

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        if !container.isEmpty { _ = try? crsnap(["rm", "--force", container]) }
        for f in files { _ = try? FileManager.default.removeItem(atPath: f) }
    }

    var checkpointctl: String {
        get throws {
            guard let path = ProcessInfo.processInfo.environment["CRSNAP_TEST_CHECKPOINTCTL"],
                  FileManager.default.isExecutableFile(atPath: path) else {
                XCTFail("CRSNAP_TEST_CHECKPOINTCTL (checkpointctl, unpacked by Scripts/testenv) is missing")
                throw XCTSkip("no checkpointctl")
            }
            return path
        }
    }

    func scratch(_ what: String) -> String {
        let path = "\(Env.store!)/../\(uniqueName(what))"
        files.append(path)
        return path
    }

    /// Over the host's root: a parent and a child, a file written, a link
    /// made, a file of the lower layer deleted.
    func start() throws {
        container = uniqueName("ckpt")
        let script = """
        import os, subprocess, time
        open('/var/tmp/ckpt-new.txt', 'w').write('written inside')
        os.symlink('/var/tmp/ckpt-new.txt', '/var/tmp/ckpt-link')
        os.unlink('/etc/debian_version')
        child = subprocess.Popen(['/usr/bin/sleep', '1000'])
        open('/var/tmp/ckpt-ready', 'w').write(str(child.pid))
        time.sleep(1000)
        """
        try crsnapOK(["run", container, "--", "/usr/bin/python3", "-c", script])
        let ready = "\(Env.store!)/containers/\(container)/root/var/tmp/ckpt-ready"
        XCTAssertTrue(waitFor(30) { FileManager.default.fileExists(atPath: ready) }, "the workload did not start")
    }

    /// Go's ByteToString (checkpointctl's sizes): 1024-based, one decimal.
    func goBytes(_ b: UInt64) -> String {
        if b < 1024 { return "\(b) B" }
        var div: UInt64 = 1024, exp = 0
        var n = b / 1024
        while n >= 1024 { div *= 1024; exp += 1; n /= 1024 }
        return String(format: "%.1f %@iB", Double(b) / Double(div), String(Array("KMGTPE")[exp]))
    }

    func testCheckpointctlReadsWhatShowReports() throws {
        let ctl = try checkpointctl
        try start()
        let id = try crsnapOK(["take", container]).trimmingCharacters(in: .whitespacesAndNewlines)
        let show = jsonObject(try crsnapOK(["show", id, "--json"]))
        let processes = (show["processes"] as? [[String: Any]]) ?? []
        XCTAssertEqual(processes.map { $0["comm"] as? String }, ["python3", "sleep"], "\(show)")
        let stats = show["stats"] as? [String: Any] ?? [:]
        let imagesBytes = (stats["images_bytes"] as? NSNumber)?.uint64Value ?? 0
        let criuVersion = try XCTUnwrap(show["criu_version"] as? String)

        let plain = scratch("ckpt.tar"), zst = scratch("ckpt.tar.zst")
        let e = jsonObject(try crsnapOK(["export", id, "-o", plain, "--format", "checkpoint-archive", "--json"]))
        XCTAssertEqual((e["images_bytes"] as? NSNumber)?.uint64Value, imagesBytes, "checkpoint/ holds the images as the take measured them")
        try crsnapOK(["export", id, "-o", zst, "--format", "checkpoint-archive", "--compress", "zstd"])

        // The layout, as GNU tar lists it.
        let listed = try runProgram("/usr/bin/tar", ["tf", plain])
        XCTAssertEqual(listed.status, 0, listed.stderr)
        let entries = Set(listed.stdout.split(separator: "\n").map(String.init))
        for must in ["config.dump", "spec.dump", "checkpoint/", "checkpoint/pstree.img", "checkpoint/inventory.img",
                     "stats-dump", "rootfs-diff.tar", "deleted.files", "crsnap/manifest.json"] {
            XCTAssertTrue(entries.contains(must), "\(must) in \(entries.sorted())")
        }
        // The container's files: what it wrote and linked, not what it deleted.
        let unpacked = scratch("ckpt-unpacked")
        try FileManager.default.createDirectory(atPath: unpacked, withIntermediateDirectories: true)
        XCTAssertEqual(try runProgram("/usr/bin/tar", ["xf", plain, "-C", unpacked]).status, 0)
        let diff = try runProgram("/usr/bin/tar", ["tvf", "\(unpacked)/rootfs-diff.tar"])
        XCTAssertEqual(diff.status, 0, diff.stderr)
        XCTAssertTrue(diff.stdout.contains("var/tmp/ckpt-new.txt"), diff.stdout)
        XCTAssertTrue(diff.stdout.contains("var/tmp/ckpt-link -> /var/tmp/ckpt-new.txt"), diff.stdout)
        XCTAssertFalse(diff.stdout.contains("debian_version"), "a whiteout is not a file of the container: \(diff.stdout)")
        let deleted = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(unpacked)/deleted.files"))) as? [String]
        XCTAssertEqual(deleted, ["/etc/debian_version"])

        for archive in [plain, zst] {
            // inspect's JSON: the process tree, the size, CRIU's statistics.
            let r = try runProgram(ctl, ["inspect", archive, "--ps-tree", "--stats", "--format", "json"])
            XCTAssertEqual(r.status, 0, "checkpointctl inspect \(archive): \(r.stderr)")
            let node = try XCTUnwrap(jsonObjects(r.stdout).first, r.stdout)
            XCTAssertEqual(node["runtime"] as? String, "crsnap")
            let size = node["checkpoint_size"] as? [String: Any] ?? [:]
            XCTAssertEqual((size["total_size"] as? NSNumber)?.uint64Value, imagesBytes, "the checkpoint's size is show's images")
            var tree: [(pid: Int, ppid: Int, comm: String)] = []
            func walk(_ n: [String: Any], parent: Int) {
                let pid = (n["pid"] as? NSNumber)?.intValue ?? -1
                tree.append((pid, parent, n["command"] as? String ?? ""))
                for child in n["children"] as? [[String: Any]] ?? [] { walk(child, parent: pid) }
            }
            walk(node["process_tree"] as? [String: Any] ?? [:], parent: 0)
            XCTAssertEqual(tree.map { "\($0.pid) \($0.ppid) \($0.comm)" },
                           processes.map { "\($0["pid"] ?? "") \($0["ppid"] ?? "") \($0["comm"] ?? "")" }, "the same process tree")
            let frozenUs = ((node["statistics"] as? [String: Any])?["frozen_time"] as? NSNumber)?.doubleValue ?? -1
            XCTAssertEqual(frozenUs / 1000, (stats["frozen_ms"] as? NSNumber)?.doubleValue ?? 0, accuracy: 0.001, "CRIU's frozen time")

            // show: accepted, with the container's id and the size.
            let s = try runProgram(ctl, ["show", archive])
            XCTAssertEqual(s.status, 0, "checkpointctl show \(archive): \(s.stderr)")
            XCTAssertTrue(s.stdout.contains(goBytes(imagesBytes)), "size \(goBytes(imagesBytes)) in: \(s.stdout)")
        }
        // The metadata: CRIU's version and crsnap's names in the annotations.
        let meta = try runProgram(ctl, ["inspect", plain, "--metadata"])
        XCTAssertEqual(meta.status, 0, meta.stderr)
        XCTAssertTrue(meta.stdout.contains("org.criu.checkpoint.criu.version: \(criuVersion)"), meta.stdout)
        XCTAssertTrue(meta.stdout.contains("io.crsnap.snapshot.id: \(id)"), meta.stdout)
        XCTAssertFalse(meta.stdout.contains("org.criu.checkpoint.container.name"), "no key that makes an engine restore it")
    }

    func testASubvolumeRootTravelsWhole() throws {
        let ctl = try checkpointctl
        guard let rootfs = Env.rootfs else { throw XCTSkip("no test rootfs") }
        container = uniqueName("ckpt-sub")
        try crsnapOK(["run", container, "--rootfs", rootfs, "--", "/usr/bin/python3", "-c",
                      "import time; open('/var/tmp/ckpt-sub', 'w').write('x'); time.sleep(1000)"])
        XCTAssertTrue(waitFor(30) { FileManager.default.fileExists(atPath: "\(Env.store!)/containers/\(self.container)/root/var/tmp/ckpt-sub") })
        let id = try crsnapOK(["take", container]).trimmingCharacters(in: .whitespacesAndNewlines)
        let out = scratch("ckpt-sub.tar")
        let e = jsonObject(try crsnapOK(["export", id, "-o", out, "--format", "checkpoint-archive", "--json"]))
        let s = try runProgram(ctl, ["show", out])
        XCTAssertEqual(s.status, 0, s.stderr)
        XCTAssertTrue(s.stdout.contains(goBytes((e["fs_bytes"] as? NSNumber)?.uint64Value ?? 0)), "the root fs diff's size: \(s.stdout)")
        let unpacked = scratch("ckpt-sub-unpacked")
        try FileManager.default.createDirectory(atPath: unpacked, withIntermediateDirectories: true)
        XCTAssertEqual(try runProgram("/usr/bin/tar", ["xf", out, "-C", unpacked, "rootfs-diff.tar", "deleted.files"]).status, 0)
        let listed = try runProgram("/usr/bin/tar", ["tf", "\(unpacked)/rootfs-diff.tar"]).stdout.split(separator: "\n").map(String.init)
        for path in ["usr/", "var/tmp/ckpt-sub", "dev/null"] { XCTAssertTrue(listed.contains(path), "\(path): the whole root is the container's") }
        let deleted = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(unpacked)/deleted.files"))) as? [String]
        XCTAssertEqual(deleted, [], "a subvolume root deletes nothing of a layer below it")
    }

    func testBadInputIsRefusedAndWritesNothing() throws {
        try start()
        let id = try crsnapOK(["take", container]).trimmingCharacters(in: .whitespacesAndNewlines)
        let out = scratch("bad.tar")
        let r = try crsnap(["export", id, "-o", out, "--format", "oci"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--format") && r.stderr.contains("checkpoint-archive"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))

        let fsOnly = try crsnapOK(["take", container, "--fs-only"]).trimmingCharacters(in: .whitespacesAndNewlines)
        let f = try crsnap(["export", fsOnly, "-o", out, "--format", "checkpoint-archive"])
        XCTAssertNotEqual(f.status, 0)
        XCTAssertTrue(f.stderr.contains("files-only"), f.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: (out as NSString).deletingLastPathComponent)
                        .filter { $0.contains(".partial-") }, [], "no temporary file left")

        // import names a checkpoint archive for what it is.
        try crsnapOK(["export", id, "-o", out, "--format", "checkpoint-archive"])
        func ids() throws -> [String] { jsonObjects(try crsnapOK(["list", container, "--json"])).compactMap { $0["id"] as? String } }
        let before = try ids()
        let i = try crsnap(["import", out])
        XCTAssertNotEqual(i.status, 0)
        XCTAssertTrue(i.stderr.contains("checkpoint archive"), i.stderr)
        XCTAssertEqual(try ids(), before, "nothing was listed")
    }
}
