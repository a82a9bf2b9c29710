import FSSnapshot
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Bad input gets a clear message naming what was wrong, a non-zero exit,
/// and changes nothing in the store.
struct BadCase {
    let args: [String]
    let status: Int32
    let mentions: String
    init(_ args: [String], _ status: Int32, _ mentions: String) {
        self.args = args
        self.status = status
        self.mentions = mentions
    }
}

final class BadInputTests: XCTestCase {
    var cname = ""

    override func setUpWithError() throws {
        try Env.require()
        cname = uniqueName("it-bad")
        try crsnapOK(["run", cname, "--", "sleep", "1000"])
        try crsnapOK(["take", cname])
        try crsnapOK(["take", cname])
        try crsnapOK(["delete", "\(cname)@2"])
    }

    override func tearDown() {
        _ = try? crsnap(["rm", "--force", cname])
    }

    func testBadInputsChangeNothing() throws {
        let long = String(repeating: "a", count: 65)
        let cases: [BadCase] = [
            BadCase(["run", "bad/name", "--", "true"], 64, "bad/name"),
            BadCase(["run", ".hidden", "--", "true"], 64, "dot"),
            BadCase(["run", long, "--", "true"], 64, "64"),
            BadCase(["run", "", "--", "true"], 64, "empty"),
            BadCase(["run", "sp ace", "--", "true"], 64, "sp ace"),
            BadCase(["run", "ok-name"], 64, "no command"),
            BadCase(["run", cname, "--", "true"], 4, "already exists"),
            BadCase(["run", "x1", "--rootfs", "relative/dir", "--", "true"], 64, "absolute"),
            BadCase(["run", "x1", "--rootfs", "/nonexistent-crsnap", "--", "true"], 64, "not a directory"),
            BadCase(["run", "x1", "--env", "NOEQUALS", "--", "true"], 64, "KEY=VALUE"),
            BadCase(["run", "x1", "--network", "bogus", "--", "true"], 64, "bogus"),
            BadCase(["run", "x1", "--publish", "8080:80", "--", "true"], 64, "needs --network bridge"),
            BadCase(["run", "x1", "--address", "10.87.0.9", "--", "true"], 64, "needs --network bridge"),
            BadCase(["run", "x1", "--network", "bridge", "--publish", "8080", "--", "true"], 64, "\"8080\""),
            BadCase(["run", "x1", "--network", "bridge", "--publish", "0:80", "--", "true"], 64, "0:80"),
            BadCase(["run", "x1", "--network", "bridge", "--publish", "70000:80", "--", "true"], 64, "70000:80"),
            BadCase(["run", "x1", "--network", "bridge", "--publish", "8080:80/sctp", "--", "true"], 64, "sctp"),
            BadCase(["run", "x1", "--network", "bridge", "--publish", "8080:80", "--publish", "8080:81", "--", "true"], 64, "twice"),
            BadCase(["run", "x1", "--network", "bridge", "--address", "10.99.0.5", "--", "true"], 64, "outside"),
            BadCase(["run", "x1", "--network", "bridge", "--address", "10.87.0.1", "--", "true"], 64, "gateway"),
            BadCase(["run", "x1", "--network", "bridge", "--address", "10.87.0.9/24", "--", "true"], 64, "10.87.0.9/24"),
            BadCase(["run", "x1", "--network", "bridge", "--address", "ten", "--", "true"], 64, "\"ten\""),
            BadCase(["network", "set"], 64, "--subnet"),
            BadCase(["network", "set", "--subnet", "10.87.0.5/24"], 64, "host bits"),
            BadCase(["network", "set", "--subnet", "127.0.0.0/16"], 64, "overlaps"),
            BadCase(["network", "set", "--subnet", "10.87.0.0/31"], 64, "no room"),
            BadCase(["network", "set", "--bridge", "a-very-long-bridge-name"], 64, "15"),
            BadCase(["take", "no-such-container"], 3, "no-such-container"),
            BadCase(["take", "../etc"], 64, "../etc"),
            BadCase(["take", cname, "--tag", "bad tag"], 64, "bad tag"),
            BadCase(["rollback", "web"], 64, "NAME@N"),
            BadCase(["rollback", "\(cname)@0"], 64, "snapshot number"),
            BadCase(["rollback", "\(cname)@x"], 64, "snapshot number"),
            BadCase(["rollback", "\(cname)@2"], 3, "\(cname)@2"),
            BadCase(["rollback", "\(cname)@99"], 3, "\(cname)@99"),
            BadCase(["rollback", "nobody@1"], 3, "nobody"),
            BadCase(["delete", "\(cname)@2"], 3, "\(cname)@2"),
            BadCase(["list", "nobody"], 3, "nobody"),
            BadCase(["exec", "nobody", "--", "true"], 3, "nobody"),
            BadCase(["exec", cname], 64, "no command"),
            BadCase(["logs", "bad@name"], 64, "bad@name"),
            BadCase(["rm", cname], 4, "running"),
            BadCase(["stop", "nobody"], 3, "nobody"),
            BadCase(["verify", "\(cname)@1", "--for", "2"], 64, "--restore-test"),
            BadCase(["rollback", "\(cname)@1", "--tcp", "keep"], 64, "keep"),
            BadCase(["resume", cname, "--tcp", "keep"], 64, "keep"),
            BadCase(["verify", "\(cname)@1", "--restore-test", "--for", "0"], 64, "--for"),
            BadCase(["verify", "\(cname)@1", "--restore-test", "--for", "601"], 64, "600"),
            BadCase(["verify", "\(cname)@2", "--restore-test"], 3, "\(cname)@2"),
        ]
        let before = storeFingerprint([cname])
        for c in cases {
            let r = try crsnap(c.args)
            XCTAssertEqual(r.status, c.status, "crsnap \(c.args): exit \(r.status), stderr: \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(c.mentions), "crsnap \(c.args): message should mention \"\(c.mentions)\": \(r.stderr)")
            XCTAssertEqual(storeFingerprint([cname]), before, "crsnap \(c.args) changed the store")
        }
        // Environment and store-path input.
        let relStore = try crsnap(["ps"], store: "relative/store")
        XCTAssertEqual(relStore.status, 64)
        XCTAssertTrue(relStore.stderr.contains("absolute"), relStore.stderr)
        let missing = try crsnap(["list", cname], store: "/nonexistent-crsnap-store")
        XCTAssertEqual(missing.status, 3, missing.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/nonexistent-crsnap-store"), "a read command does not create a store")
        XCTAssertEqual(storeFingerprint([cname]), before)
        // The container still runs, its remaining snapshot still restores.
        XCTAssertTrue(try crsnapOK(["ps"]).contains(cname))
        try crsnapOK(["rollback", "\(cname)@1"])
        // Numbers are never reused: the deleted @2 stays gone (the rollback's
        // own pre-rollback snapshot took @3).
        XCTAssertEqual(try crsnapOK(["take", cname]).trimmingCharacters(in: .whitespacesAndNewlines), "\(cname)@4")
        XCTAssertFalse(try crsnapOK(["list", cname]).contains("\(cname)@2 "))
    }
}

/// A store path that is not on btrfs gets a loop-mounted btrfs image.
final class StoreImageTests: XCTestCase {
    func testStoreOnNonBtrfsMakesImage() throws {
        try Env.require()
        let path = "/var/tmp/crsnap-it-image-\(getpid())"
        defer {
            if Btrfs.isBtrfs("\(path)/data") {
                _ = umount2("\(path)/data", Int32(MNT_DETACH))
            }
            try? FileManager.default.removeItem(atPath: path)
        }
        if Btrfs.isBtrfs("/var/tmp") { throw XCTSkip("/var/tmp is itself btrfs here") }
        let out = try crsnap(["init", "--json"], store: path)
        XCTAssertEqual(out.status, 0, out.stderr)
        let obj = try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(obj["backend"] as? String, "btrfs")
        XCTAssertEqual(obj["image"] as? Bool, true)
        XCTAssertEqual(obj["root"] as? String, "\(path)/data")
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(path)/btrfs.img"))
        XCTAssertTrue(Btrfs.isBtrfs("\(path)/data"), "the image is mounted as btrfs")
        let attrs = try FileManager.default.attributesOfItem(atPath: path)
        XCTAssertEqual((attrs[.posixPermissions] as? NSNumber)?.intValue, 0o700, "the store is root-only")
    }
}

/// Stores on filesystems without subvolumes (loop images): the overlay root
/// still works, snapshots are copies, and take says what they cost — bytes
/// copied on ext4, bytes cloned (none copied) on xfs with reflink.
final class CopyStoreTests: XCTestCase {
    /// Makes a 1 GiB `fs` loop image, a copy store on it, runs the counter
    /// workload, takes and rolls back; returns take's stats.
    func copyStoreRoundTrip(_ fs: String, mkfs: [String], doctorSays: String, transfer: Bool = false) throws -> [String: Any] {
        try Env.require()
        let dir = "/var/tmp/crsnap-it-\(fs)-\(getpid())"
        let mnt = "\(dir)/mnt"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        defer {
            _ = try? crsnap(["rm", "--force", "e"], store: "\(mnt)/store")
            try? Mounts.unmount(mnt, lazy: true)
            try? FileManager.default.removeItem(atPath: dir)
        }
        let image = "\(dir)/\(fs).img"
        XCTAssertTrue(FileManager.default.createFile(atPath: image, contents: nil))
        XCTAssertEqual(truncate(image, 1 << 30), 0)
        try Program.run(mkfs + [image])
        try Mounts.mount(source: image, target: mnt, type: fs, options: "loop")
        let store = "\(mnt)/store"
        let initOut = try crsnap(["init", "--backend", "copy", "--json"], store: store)
        XCTAssertEqual(initOut.status, 0, initOut.stderr)
        XCTAssertTrue(initOut.stdout.contains("\"backend\" : \"copy\""), initOut.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(store)/btrfs.img"), "no btrfs image on a copy store")
        let doctor = try crsnap(["doctor"], store: store)
        XCTAssertTrue(doctor.stdout.contains(doctorSays), "doctor on \(fs): \(doctor.stdout)")

        XCTAssertEqual(try crsnap(["run", "e", "--env", "UNLINKED_MIB=1", "--", "python3", "-c", workloadSource], store: store).status, 0)
        let log = "\(store)/containers/e/fs/upper/var/lib/crsnap-workload/log"
        XCTAssertTrue(waitFor(20) { counterLines(log).count >= 5 })
        let take = try crsnap(["take", "e", "--json"], store: store)
        XCTAssertEqual(take.status, 0, take.stderr)
        let stats = (try JSONSerialization.jsonObject(with: Data(take.stdout.utf8)) as! [String: Any])["stats"] as! [String: Any]
        let snapLast = counterLines("\(store)/containers/e/snapshots/1/fs/upper/var/lib/crsnap-workload/log").last ?? 0
        XCTAssertGreaterThan(snapLast, 0)
        // A checkpoint archive needs no btrfs: its files travel as a tar.
        let archive = "\(dir)/e-1.tar"
        let ex = try crsnap(["export", "e@1", "-o", archive, "--format", "checkpoint-archive"], store: store)
        XCTAssertEqual(ex.status, 0, ex.stderr)
        let inner = try runProgram("/usr/bin/tar", ["xOf", archive, "rootfs-diff.tar"])
        XCTAssertTrue(inner.stdout.contains("var/lib/crsnap-workload/log"), "the workload's files from the \(fs) copy store")
        usleep(300_000)
        let rb = try crsnap(["rollback", "e@1"], store: store)
        XCTAssertEqual(rb.status, 0, rb.stderr)
        XCTAssertTrue(waitFor(10) { (counterLines(log).last ?? 0) > snapLast + 5 })
        let lines = counterLines(log)
        XCTAssertEqual(lines, Array(1...lines.count), "memory agrees with the copied files on \(fs)")
        // The workload checks its unlinked and O_TMPFILE files every 10 steps.
        XCTAssertTrue(waitFor(10) { (counterLines(log).last ?? 0) > snapLast + 25 })
        let said = try crsnap(["logs", "e"], store: store).stdout
        XCTAssertFalse(said.contains("ERR"), "the unlinked files read back after the rollback on \(fs): \(said.suffix(400))")
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(store)/containers/e/snapshots/1/manifest.json"))) as! [String: Any]
        var result = stats
        result["unlinked"] = manifest["unlinked"]
        let bad = try crsnap(["init", "--backend", "zfs"], store: store)
        XCTAssertEqual(bad.status, 64)
        XCTAssertTrue(bad.stderr.contains("zfs"), bad.stderr)
        if transfer { try transferFromCopyStore(store, dir: dir, mnt: mnt) }
        return result
    }

    /// crsnap's own archive of a copy store's snapshot (its tree as tar):
    /// imported into a btrfs store and into another copy store, resumed in
    /// each, memory carries on from the files; the overlay's opaque marks
    /// and device nodes arrive; what a copy store cannot hold is refused.
    func transferFromCopyStore(_ store: String, dir: String, mnt: String) throws {
        let archive = "\(dir)/e-1.crsnap"
        let ex = try crsnap(["export", "e@1", "-o", archive, "--json"], store: store)
        XCTAssertEqual(ex.status, 0, ex.stderr)
        XCTAssertGreaterThan((jsonObject(ex.stdout)["fs_bytes"] as? NSNumber)?.intValue ?? 0, 0)
        let listed = try runProgram("/usr/bin/tar", ["tf", archive]).stdout
        XCTAssertTrue(listed.contains("fs.tar\n") && !listed.contains("fs.btrfs"), listed)
        let inner = try runProgram("/bin/sh", ["-c", "tar xOf \"$0\" fs.tar | tar tvf -", archive]).stdout
        XCTAssertTrue(inner.contains("./upper/var/lib/crsnap-workload/log") || inner.contains("upper/var/lib/crsnap-workload/log"), inner.prefix(2000).description)
        let incremental = try crsnap(["send", "e@1", "--parent", "e@1"], store: store)
        XCTAssertNotEqual(incremental.status, 0)
        XCTAssertTrue(incremental.stderr.contains("copy store") && incremental.stderr.contains("--parent"), incremental.stderr)

        func resumesAndAgrees(_ name: String, in target: String) throws {
            let imp = try crsnap(["import", archive, "--as", name, "--json"], store: target)
            XCTAssertEqual(imp.status, 0, imp.stderr)
            let c = TestContainer(name: name, overlay: true, store: target)
            let upper = c.snapshotFiles(1)
            XCTAssertEqual(try Sys.extendedAttributes("\(upper)/tmp")["trusted.overlay.opaque"], Array("y".utf8),
                           "the private /tmp stays opaque in \(target)")
            var st = stat()
            XCTAssertEqual(lstat("\(upper)/dev/null", &st), 0)
            XCTAssertEqual(st.st_mode & S_IFMT, S_IFCHR, "/dev/null is a device in \(target)")
            XCTAssertEqual(st.st_rdev, dev_t((1 << 8) | 3))
            let atSnapshot = counterLines(c.snapshotWorkloadLog(1)).last ?? 0
            XCTAssertGreaterThan(atSnapshot, 0)
            let r = try crsnap(["resume", name], store: target)
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(waitFor(15) { (counterLines(c.workloadLog).last ?? 0) > atSnapshot + 5 }, "\(name) did not carry on in \(target)")
            let lines = counterLines(c.workloadLog)
            XCTAssertEqual(lines, Array(1...(lines.last ?? 0)), "memory and files agree in \(target)")
            let said = try crsnap(["logs", name], store: target).stdout
            XCTAssertFalse(said.contains("ERR") || said.contains("Traceback"), "\(name) in \(target): \(said.suffix(400))")
        }

        // Into the btrfs test store: the tree becomes a read-only subvolume.
        let name = uniqueName("fromcopy")
        defer { _ = try? crsnap(["rm", "--force", name]) }
        try resumesAndAgrees(name, in: Env.store!)
        XCTAssertEqual(try Btrfs.isReadOnly("\(Env.store!)/containers/\(name)/snapshots/1/fs"), true)

        // Into another copy store.
        let store2 = "\(mnt)/store2"
        XCTAssertEqual(try crsnap(["init", "--backend", "copy"], store: store2).status, 0)
        defer { _ = try? crsnap(["rm", "--force", "e2"], store: store2) }
        try resumesAndAgrees("e2", in: store2)

        // A btrfs store's archive carries a btrfs send stream: refused by a
        // copy store, naming why, nothing listed.
        let fromBtrfs = "\(dir)/btrfs.crsnap"
        XCTAssertEqual(try crsnap(["export", "\(name)@1", "-o", fromBtrfs]).status, 0)
        let refused = try crsnap(["import", fromBtrfs, "--as", "e3"], store: store2)
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.stderr.contains("btrfs send stream") && refused.stderr.contains("copy store"), refused.stderr)
        XCTAssertFalse(jsonObjects(try crsnap(["ps", "--json"], store: store2).stdout).contains { $0["name"] as? String == "e3" }, "nothing listed")

        // A damaged tree (a header inside it, or a file's bytes): refused
        // naming it, nothing listed, nothing left behind.
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: archive)))
        let t = try XCTUnwrap(tarEntries(bytes)["fs.tar"])
        for offset in [t.offset + 1, t.offset + t.size / 2] {
            var copy = bytes
            copy[offset] ^= 0x20
            let damaged = "\(dir)/damaged.crsnap"
            try Data(copy).write(to: URL(fileURLWithPath: damaged))
            let r = try crsnap(["import", damaged, "--as", "e4"], store: store2)
            XCTAssertEqual(r.status, 1, r.stderr)
            XCTAssertTrue(r.stderr.contains("fs.tar does not match its checksum") && r.stderr.contains("nothing was changed"), r.stderr)
            let left = (try? FileManager.default.contentsOfDirectory(atPath: "\(store2)/containers")) ?? []
            XCTAssertFalse(left.contains { $0 == "e4" || $0.hasPrefix(".import-") }, "nothing listed or left: \(left)")
        }

        // migrate from one copy store to another: both sends whole.
        let mig = try crsnap(["migrate", "e", "--to", store2, "--json"], store: store)
        XCTAssertEqual(mig.status, 0, mig.stderr)
        defer { _ = try? crsnap(["rm", "--force", "e"], store: store2) }
        XCTAssertNil(jsonObject(mig.stdout)["first_parent"] as? String, mig.stdout)
        let moved = TestContainer(name: "e", overlay: true, store: store2)
        let before = counterLines(moved.workloadLog).last ?? 0
        XCTAssertTrue(waitFor(15) { (counterLines(moved.workloadLog).last ?? 0) > before + 5 }, "e did not carry on in \(store2)")
        let lines = counterLines(moved.workloadLog)
        XCTAssertEqual(lines, Array(1...(lines.last ?? 0)), "memory and files agree after the migrate")
        let left = jsonObjects(try crsnap(["ps", "--json"], store: store).stdout).compactMap { $0["name"] as? String }
        XCTAssertFalse(left.contains("e"), "e left its first store: \(left)")
    }

    /// How the snapshot captured the workload's unlinked and O_TMPFILE files.
    func capturedHow(_ stats: [String: Any]) -> [String] {
        ((stats["unlinked"] as? [[String: Any]]) ?? []).compactMap { $0["captured"] as? String }
    }

    func testExt4StoreCopiesAndRollsBack() throws {
        let stats = try copyStoreRoundTrip("ext4", mkfs: ["mkfs.ext4", "-q", "-F"],
                                           doctorSays: "copies the container's writable files inside the freeze", transfer: true)
        XCTAssertGreaterThan((stats["copied_bytes"] as? NSNumber)?.intValue ?? 0, 0, "take reports the bytes it copied: \(stats)")
        XCTAssertNil(stats["reflinked_bytes"], "ext4 clones nothing: \(stats)")
        XCTAssertEqual(capturedHow(stats), ["copied", "copied"], "ext4: the unlinked and O_TMPFILE files are copied: \(stats)")
    }

    func testXfsReflinkStoreClonesAndRollsBack() throws {
        let stats = try copyStoreRoundTrip("xfs", mkfs: ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
                                           doctorSays: "the filesystem clones files")
        XCTAssertEqual((stats["copied_bytes"] as? NSNumber)?.intValue, 0, "xfs with reflink copies no bytes: \(stats)")
        XCTAssertGreaterThan((stats["reflinked_bytes"] as? NSNumber)?.intValue ?? 0, 0, "take reports the bytes it cloned: \(stats)")
        XCTAssertEqual(capturedHow(stats), ["reflinked", "reflinked"], "xfs: the unlinked and O_TMPFILE files are cloned: \(stats)")
    }
}
