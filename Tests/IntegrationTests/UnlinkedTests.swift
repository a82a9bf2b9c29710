import FSSnapshot
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Files other tools lose: unlinked open files of any size (held as fds,
/// mapped shared or private, or both), O_TMPFILE files, files renamed while
/// open or with another hard link. Each survives take and rollback with its
/// content, size, offset and flags, read back through the restored process's
/// own fds and mappings; on btrfs no byte of them is copied.
final class UnlinkedTests: XCTestCase {
    var cname = ""

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        if !cname.isEmpty { _ = try? crsnap(["rm", "--force", cname]) }
    }

    static var workload: String {
        let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        return (try? String(contentsOf: here.appendingPathComponent("Workloads/unlinked.py"), encoding: .utf8)) ?? ""
    }

    func said() throws -> [String] {
        try crsnap(["logs", cname]).stdout.split(separator: "\n").map(String.init)
            .filter { !$0.hasPrefix("[crsnap") }
    }

    /// Sends `signal` to the workload (pid 1 of the container) and returns
    /// the first line it says afterwards that starts with `prefix`.
    func ask(_ signal: String, _ prefix: String) throws -> String {
        let before = try said().count
        try crsnapOK(["exec", cname, "--", "kill", "-\(signal)", "1"])
        var answer = ""
        _ = waitFor(60) {
            answer = ((try? self.said()) ?? []).dropFirst(before).first { $0.hasPrefix(prefix) } ?? ""
            return !answer.isEmpty
        }
        return answer
    }

    func manifest(_ n: Int) throws -> [String: Any] {
        let path = "\(Env.store!)/containers/\(cname)/snapshots/\(n)/manifest.json"
        return try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    }

    /// run, take, change everything, roll back, check; take the restored
    /// state again and roll back to it.
    func roundTrip(rootfs: Bool, env: [String] = [], takeEnv: [String: String] = [:], expectCaptured: String,
                   expectFiles: Int = 7) throws {
        cname = uniqueName(rootfs ? "it-unl-sub" : "it-unl")
        var run = ["run", cname]
        if rootfs { run += ["--rootfs", Env.rootfs!] }
        for e in env { run += ["--env", e] }
        try crsnapOK(run + ["--", "python3", "-c", Self.workload])
        XCTAssertTrue(waitFor(120) { ((try? self.said()) ?? []).contains("ready") }, "workload ready: \((try? self.said()) ?? [])")

        let take = try crsnap(["take", cname, "--json"], env: takeEnv)
        XCTAssertEqual(take.status, 0, take.stderr)
        let result = try JSONSerialization.jsonObject(with: Data(take.stdout.utf8)) as! [String: Any]
        let stats = result["stats"] as! [String: Any]
        let id = result["id"] as! String
        let unlinked = (try manifest(1)["unlinked"] as? [[String: Any]]) ?? []
        // real, append, tmpfile, sparse, shared, private, both: the two mapped
        // only ones are one file each; "both" is held and mapped.
        XCTAssertEqual(unlinked.count, expectFiles, "every unlinked file is in the manifest: \(unlinked.map { $0["path"] ?? "" })")
        XCTAssertEqual(Set(unlinked.compactMap { $0["captured"] as? String }), [expectCaptured], "\(unlinked)")
        let paths = Set(unlinked.compactMap { $0["path"] as? String })
        for name in ["real", "append", "sparse", "shared", "private", "both"] {
            XCTAssertTrue(paths.contains("/var/lib/crsnap-unlinked/\(name)"), "\(name) in \(paths)")
        }
        XCTAssertTrue(unlinked.contains { ($0["mapped"] as? Bool) == true && ($0["held"] as? Bool) == false }, "a mapped-only file")
        let total = unlinked.reduce(0) { $0 + (($1["size"] as? NSNumber)?.intValue ?? 0) }
        XCTAssertEqual((stats["unlinked_bytes"] as? NSNumber)?.intValue, total, "\(stats)")
        if expectCaptured == "reflinked" {
            XCTAssertEqual((stats["copied_bytes"] as? NSNumber)?.intValue, 0, "on btrfs no byte is copied: \(stats)")
        } else {
            XCTAssertGreaterThan((stats["copied_bytes"] as? NSNumber)?.intValue ?? 0, 0, "copies are reported: \(stats)")
        }
        // show lists them: the path each had, its size, how it was captured.
        let show = try JSONSerialization.jsonObject(with: Data(try crsnapOK(["show", id, "--json"]).utf8)) as! [String: Any]
        let shown = (show["unlinked"] as? [[String: Any]]) ?? []
        XCTAssertEqual(Set(shown.compactMap { $0["path"] as? String }), paths, "\(show)")
        XCTAssertEqual(shown.reduce(0) { $0 + (($1["size"] as? NSNumber)?.intValue ?? 0) }, total)
        XCTAssertEqual(Set(shown.compactMap { $0["captured"] as? String }), [expectCaptured])
        let fsShown = (show["filesystems"] as? [[String: Any]]) ?? []
        XCTAssertEqual(fsShown.first?["captured"] as? String, "btrfs snapshot", "\(show)")
        XCTAssertTrue(try crsnapOK(["show", id]).contains("/var/lib/crsnap-unlinked/sparse"))
        let images = ((try? FileManager.default.contentsOfDirectory(atPath: "\(Env.store!)/containers/\(cname)/snapshots/1/images")) ?? [])
        XCTAssertFalse(images.contains { $0.hasPrefix("ghost") }, "CRIU copied no ghost file: \(images)")

        XCTAssertEqual(try ask("USR2", "mutated"), "mutated")
        XCTAssertTrue(try ask("USR1", "CHECK").hasPrefix("CHECK bad"), "the change after the take is seen before the rollback")
        try crsnapOK(["rollback", id])
        XCTAssertEqual(try ask("USR1", "CHECK"), "CHECK ok", "after rollback to \(id)")
        let files = TestContainer(name: cname, overlay: !rootfs).filesDir
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(files)/.crsnap-unlinked"), "no scratch files left")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: "\(files)/var/lib/crsnap-unlinked").sorted(),
                       ["after-rename", "h2"], "the unlinked files are unlinked again")

        // The restored files are unlinked open files again: take them again.
        let again = try crsnapOK(["take", cname]).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(try ask("USR2", "mutated"), "mutated")
        try crsnapOK(["rollback", again])
        XCTAssertEqual(try ask("USR1", "CHECK"), "CHECK ok", "after rollback to \(again)")
        try crsnapOK(["rollback", id])
        XCTAssertEqual(try ask("USR1", "CHECK"), "CHECK ok", "after rollback to the older \(id)")
    }

    /// 1 GiB sparse file, the default overlay root: all cloned.
    func testUnlinkedFilesOfAnySizeOnTheOverlayRoot() throws {
        try roundTrip(rootfs: false, expectCaptured: "reflinked")
    }

    /// 256 MiB of real data and a 1 GiB sparse file on a subvolume root.
    func testUnlinkedFilesOnASubvolumeRootWith256MiBOfRealData() throws {
        try roundTrip(rootfs: true, env: ["REAL_MIB=256"], expectCaptured: "reflinked")
    }

    /// A take killed while capturing leaves no scratch file in the container;
    /// a snapshot whose captured file was removed by hand is refused.
    func testKilledCaptureAndAMissingCapturedFile() throws {
        cname = uniqueName("it-unl-kill")
        try crsnapOK(["run", cname, "--env", "SPARSE_MIB=16", "--", "python3", "-c", Self.workload])
        XCTAssertTrue(waitFor(120) { ((try? self.said()) ?? []).contains("ready") })
        // Killed while frozen, with a scratch file for the clone on the overlay.
        let killed = try crsnap(["take", cname], env: ["CRSNAP_FAULT": "kill:take.unlinked-scratch"])
        XCTAssertEqual(killed.status, 128 + SIGKILL, killed.stderr)
        let files = TestContainer(name: cname, overlay: true).filesDir
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(files)/.crsnap-unlinked/take-0"), "the kill left the scratch file")
        XCTAssertTrue(waitFor(15) { TestContainer(name: self.cname, overlay: true).freezerState == "THAWED" })
        let id = try crsnapOK(["take", cname]).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(files)/.crsnap-unlinked"), "no scratch left after the kill")
        XCTAssertEqual(try crsnapOK(["list", cname, "--json"]).components(separatedBy: "\"id\"").count - 1, 1, "only the complete snapshot is listed")
        XCTAssertEqual(try ask("USR1", "CHECK"), "CHECK ok")

        let n = Int(id.split(separator: "@").last!)!
        let saved = "\(Env.store!)/containers/\(cname)/snapshots/\(n)/unlinked/0"
        try FileManager.default.removeItem(atPath: saved)
        let verify = try crsnap(["verify", id])
        XCTAssertEqual(verify.status, 1)
        XCTAssertTrue(verify.stderr.contains("unlinked file") && verify.stderr.contains("missing"), verify.stderr)
        let rb = try crsnap(["rollback", id])
        XCTAssertEqual(rb.status, 1)
        XCTAssertTrue(rb.stderr.contains(id) && rb.stderr.contains("nothing was changed"), rb.stderr)
        XCTAssertEqual(try ask("USR1", "CHECK"), "CHECK ok", "the container runs on untouched")
    }

    /// Where the filesystem cannot clone (forced by a test hook), the bytes
    /// are copied inside the freeze and take says how many.
    func testUnlinkedFilesAreCopiedWhereCloningFails() throws {
        try roundTrip(rootfs: false, env: ["SPARSE_MIB=64"],
                      takeEnv: ["CRSNAP_FAULT": "take.no-reflink", "CRSNAP_TEST_HOOKS": "1"], expectCaptured: "copied")
    }
}
