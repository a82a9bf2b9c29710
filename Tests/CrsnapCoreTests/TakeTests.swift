@testable import CrsnapCore
import FSSnapshot
import Foundation
import ProcessCR
import XCTest

/// A "volume" is a plain directory: enough for the transaction, which only
/// asks whether one exists and deletes it.
struct FakeBackend: SnapshotBackend {
    var name: String { "fake" }
    var capabilities: BackendCapabilities { [] }
    func createVolume(_ path: String) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    }
    func snapshot(_ source: String, to destination: String, readOnly: Bool) throws {
        try FileManager.default.copyItem(atPath: source, toPath: destination)
    }
    func deleteVolume(_ path: String) throws { try FileManager.default.removeItem(atPath: path) }
    func isVolume(_ path: String) -> Bool { Sys.isDirectory(path) }
}

/// Plays CRIU and btrfs: records every call, and fails where told.
final class FakeTakeSteps: TakeSteps {
    struct Injected: Error, Equatable, CustomStringConvertible {
        let at: String
        var description: String { "injected failure at \(at)" }
    }

    let container: Container
    var calls: [String] = []
    var deletedVolumes: [String] = []
    /// What the journal said while CRIU was running.
    var journalDuringDump: String?
    var failFlush = false
    var failSnapshot = false
    /// CRIU failing late: after post-dump was answered, before its final reply.
    var failDumpAfterPostDump = false
    var skipPostDump = false
    var writeInventory = true
    var failEnsureThawed = false
    var failFreeze = false
    /// Stage the images in memory (as if a tmpfs had been mounted).
    var stage = false
    var failDeleteVolume = false
    /// What the unlinked-file capture reports (called in post-dump).
    var unlinked = Unlinked.Captured()
    let stats: DumpStats

    init(container: Container) throws {
        self.container = container
        // DumpStats has no public memberwise initializer; it is Codable.
        let json = #"{"freezing_ms": 1.5, "frozen_ms": 42.25, "memdump_ms": 3, "memwrite_ms": 4, "pages_written": 77}"#
        stats = try JSONDecoder().decode(DumpStats.self, from: Data(json.utf8))
    }

    func flush() throws {
        calls.append("flush")
        if failFlush { throw Injected(at: "flush") }
    }

    func stageImages(at dir: String) throws -> ImageStaging.Plan? {
        guard stage else { return nil }
        calls.append("stage")
        return ImageStaging.Plan(expected: 1 << 20, limit: 2 << 20)
    }

    func unstageImages(_ dir: String) throws {
        calls.append("unstage")
        XCTAssertTrue(Sys.exists("\(dir)/inventory.img"), "the images are there to be copied")
    }

    func freeze() throws {
        calls.append("freeze")
        if failFreeze { throw Injected(at: "freeze") }
    }

    func snapshotVolume(to destination: String) throws {
        calls.append("snapshot \(destination)")
        if failSnapshot { throw Injected(at: "snapshot") }
        try FileManager.default.createDirectory(atPath: destination, withIntermediateDirectories: false)
        try Data("state at the frozen instant\n".utf8).write(to: URL(fileURLWithPath: "\(destination)/data"))
    }

    /// Behaves like Checkpointer.dump: CRIU writes images, notifies pre-dump,
    /// then post-dump while frozen; a throwing notification aborts the dump
    /// with the handler's error.
    func dump(imagesDir: String, onPreDump: @escaping () throws -> Void,
              onPostDump: @escaping () throws -> Void) throws -> DumpStats {
        calls.append("dump")
        journalDuringDump = try? String(contentsOfFile: container.journalPath, encoding: .utf8)
        try onPreDump()
        if writeInventory {
            try Data(repeating: 0xAB, count: 1000).write(to: URL(fileURLWithPath: "\(imagesDir)/inventory.img"))
            try Data(repeating: 0xCD, count: 234).write(to: URL(fileURLWithPath: "\(imagesDir)/pages-1.img"))
        }
        if !skipPostDump { try onPostDump() }
        if failDumpAfterPostDump { throw Injected(at: "criu after post-dump") }
        return stats
    }

    func captureUnlinked(into dir: String) throws -> Unlinked.Captured {
        calls.append("unlinked \(dir)")
        return unlinked
    }

    func ensureThawed() throws {
        calls.append("ensureThawed")
        if failEnsureThawed { throw Injected(at: "thaw") }
    }

    func deleteVolume(_ path: String) throws {
        calls.append("deleteVolume \(path)")
        deletedVolumes.append(path)
        if failDeleteVolume { throw Injected(at: "deleteVolume") }
        try FileManager.default.removeItem(atPath: path)
    }

    func isVolume(_ path: String) -> Bool { Sys.isDirectory(path) }
}

final class TakeTests: XCTestCase {
    var tmp: TempDir!
    var store: Store!
    var c: Container!

    override func setUpWithError() throws {
        tmp = try TempDir()
        let root = "\(tmp.path)/store"
        store = Store(path: root, root: root, id: "0000beef", backend: FakeBackend(), usesImage: false)
        c = try Container(store: store, name: "web")
        try FileManager.default.createDirectory(atPath: c.dir, withIntermediateDirectories: true)
    }

    override func tearDown() {
        store = nil
        c = nil
        tmp = nil
    }

    func take(_ steps: FakeTakeSteps, tag: String? = nil) throws -> TakeResult {
        try Take.run(container: c, tag: tag, steps: steps) { number, stats in
            Manifest(id: "web@\(number)", container: "web", number: number, tag: tag,
                     created: Date(timeIntervalSince1970: 1_700_000_000), kind: .overlay, backend: "fake",
                     log_pipe: "pipe:[1]", init_pid_ns: 1, criu_version: "4.2.1", stats: stats)
        }
    }

    func entries(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
    }

    var nextID: String? { try? String(contentsOfFile: c.nextIDPath, encoding: .utf8) }

    // MARK: success

    func testSuccessfulTakeLeavesACompleteSnapshot() throws {
        let steps = try FakeTakeSteps(container: c)
        let r = try take(steps, tag: "v1")

        XCTAssertEqual(r.id, "web@1")
        XCTAssertEqual(r.container, "web")
        XCTAssertEqual(r.tag, "v1")
        XCTAssertEqual(r.criu, steps.stats)
        XCTAssertEqual(r.stats.frozen_ms, 42.25, "frozen time is CRIU's")
        XCTAssertEqual(r.stats.images_bytes, 1234, "bytes of the images written")
        XCTAssertGreaterThanOrEqual(r.stats.dump_ms, r.stats.fs_snapshot_ms)

        XCTAssertEqual(entries(c.snapshotsDir), ["1"], "no staging directory is left")
        XCTAssertTrue(Sys.exists("\(c.snapshotDir(1))/manifest.json"))
        XCTAssertTrue(Sys.exists("\(c.snapshotDir(1))/images/inventory.img"))
        XCTAssertTrue(Sys.exists("\(c.snapshotDir(1))/fs/data"), "the fs snapshot moved with the staging dir")
        XCTAssertFalse(Sys.exists(c.journalPath), "the journal entry is ended")
        XCTAssertEqual(nextID, "2\n")
        XCTAssertEqual(c.nextNumber(), 2)

        let m = try c.manifest(1)
        XCTAssertEqual(m.id, "web@1")
        XCTAssertEqual(m.tag, "v1")
        XCTAssertEqual(m.stats, r.stats)
        XCTAssertEqual(c.snapshotNumbers(), [1])
    }

    func testFlushComesBeforeTheSnapshotWhichComesInsideTheDump() throws {
        let steps = try FakeTakeSteps(container: c)
        _ = try take(steps)
        let staging = "\(c.snapshotsDir)/.staging-1"
        XCTAssertEqual(steps.calls, ["dump", "flush", "freeze", "snapshot \(staging)/fs", "unlinked \(staging)/unlinked",
                                     "ensureThawed"])
    }

    func testStagedImagesGoToTheStoreAfterTheThawBeforeTheChecksums() throws {
        let steps = try FakeTakeSteps(container: c)
        steps.stage = true
        let r = try take(steps)
        let staging = "\(c.snapshotsDir)/.staging-1"
        XCTAssertEqual(steps.calls, ["stage", "dump", "flush", "freeze", "snapshot \(staging)/fs", "unlinked \(staging)/unlinked",
                                     "ensureThawed", "unstage"])
        XCTAssertNotNil(r.stats.staging_copy_ms)
        XCTAssertNotNil(try c.manifest(1).images_sha256, "hashed after the copy")
        let direct = try take(try FakeTakeSteps(container: c))
        XCTAssertNil(direct.stats.staging_copy_ms, "not staged: no copy")
    }

    func testAFailedDumpOfStagedImagesCopiesNothing() throws {
        let steps = try FakeTakeSteps(container: c)
        steps.stage = true
        steps.failDumpAfterPostDump = true
        XCTAssertThrowsError(try take(steps))
        XCTAssertFalse(steps.calls.contains("unstage"))
        assertNothingLeft(steps, nextIDBefore: nil)
    }

    func testStagingPlanAndRefusal() {
        let mib: UInt64 = 1 << 20
        let plan = ImageStaging.plan(tasks: [10, 11], tmpfsBytes: 5 * mib) { pid in pid == 10 ? 100 * mib : 20 * mib }
        XCTAssertEqual(plan.expected, (64 + 5 + 100 + 20) * mib, "memory of each task, tmpfs, headroom")
        XCTAssertGreaterThanOrEqual(plan.limit, plan.expected + plan.expected / 2)
        XCTAssertEqual(plan.limit % mib, 0)
        XCTAssertNil(ImageStaging.refusal(plan, available: 2048 * mib, floor: 1024 * mib))
        let why = ImageStaging.refusal(plan, available: 1100 * mib, floor: 1024 * mib)
        XCTAssertEqual(why, "the images need about 189 MiB and 1100 MiB of memory are available, of which 1024 MiB must stay free")
        XCTAssertNotNil(ImageStaging.refusal(plan, available: nil, floor: 0))
        XCTAssertEqual(ImageStaging.floor(total: 24 << 30), (24 << 30) / 10)
        XCTAssertEqual(ImageStaging.floor(total: 4 << 30), 1 << 30)
    }

    func testThePauseRunsFromTheFreezeToTheThaw() throws {
        let r = try take(try FakeTakeSteps(container: c))
        let freezing = try XCTUnwrap(r.stats.freezing_ms, "freezing_ms is reported")
        let pause = try XCTUnwrap(r.stats.pause_ms, "pause_ms is reported")
        XCTAssertGreaterThanOrEqual(freezing, 0)
        XCTAssertGreaterThanOrEqual(pause, freezing, "the pause holds the freeze")
        XCTAssertGreaterThanOrEqual(pause, r.stats.fs_snapshot_ms, "the pause holds the fs snapshot")
        XCTAssertEqual(try c.manifest(r.number).stats.pause_ms, pause, "the manifest keeps it")
    }

    func testUnlinkedFilesCapturedWhileFrozenAreInTheManifestAndStats() throws {
        let steps = try FakeTakeSteps(container: c)
        func file(_ k: Int, _ size: UInt64, _ how: FileClone.How) -> Manifest.UnlinkedFile {
            Manifest.UnlinkedFile(key: "file[2a:\(k)]", path: "/var/lib/x\(k)", size: size, mode: 0o600, uid: 0, gid: 0,
                                  file: "\(k)", captured: how, held: true, mapped: k == 1)
        }
        steps.unlinked.files = [file(0, 1 << 30, .reflinked), file(1, 4096, .copied)]
        steps.unlinked.reflinkedBytes = 1 << 30
        steps.unlinked.copiedBytes = 4096
        let r = try take(steps)
        XCTAssertEqual(r.stats.unlinked_bytes, (1 << 30) + 4096)
        // The fake backend copies the volume too (28 bytes): both are counted.
        let volumeCopy = Sys.treeSize("\(c.snapshotDir(r.number))/fs")
        XCTAssertEqual(r.stats.copied_bytes, volumeCopy + 4096, "copied bytes are reported")
        XCTAssertEqual(r.stats.reflinked_bytes, 1 << 30)
        let m = try c.manifest(r.number)
        XCTAssertEqual(m.unlinked, steps.unlinked.files)
        XCTAssertEqual(m.stats, r.stats)
    }

    func testNoUnlinkedFilesLeaveTheManifestAndStatsWithoutThem() throws {
        let r = try take(try FakeTakeSteps(container: c))
        XCTAssertNil(r.stats.unlinked_bytes)
        XCTAssertNil(r.stats.reflinked_bytes)
        XCTAssertNil(try c.manifest(r.number).unlinked)
    }

    func testJournalNamesTheStagingDirectoryWhileCriuRuns() throws {
        let steps = try FakeTakeSteps(container: c)
        _ = try take(steps)
        let journal = try XCTUnwrap(steps.journalDuringDump, "a journal entry exists during the dump")
        XCTAssertTrue(journal.contains("\"op\" : \"take\""), journal)
        XCTAssertTrue(journal.contains(".staging-1"), journal)
    }

    // MARK: failures

    /// Asserts that a failed take left nothing behind and the tasks were thawed.
    func assertNothingLeft(_ steps: FakeTakeSteps, nextIDBefore: String?, number: Int = 1,
                           file: StaticString = #filePath, line: UInt = #line) {
        let left = entries(c.snapshotsDir)
        XCTAssertFalse(left.contains(".staging-\(number)"), "staging left: \(left)", file: file, line: line)
        XCTAssertFalse(left.contains("\(number)"), "snapshot left: \(left)", file: file, line: line)
        XCTAssertFalse(Sys.exists(c.journalPath), "journal left", file: file, line: line)
        XCTAssertTrue(steps.calls.contains("ensureThawed"), "tasks not thawed: \(steps.calls)", file: file, line: line)
        XCTAssertEqual(nextID, nextIDBefore, "next-id changed", file: file, line: line)
    }

    func testFailingSnapshotInPostDumpDiscardsEverything() throws {
        let steps = try FakeTakeSteps(container: c)
        steps.failSnapshot = true
        XCTAssertThrowsError(try take(steps)) { error in
            XCTAssertEqual(error as? FakeTakeSteps.Injected, .init(at: "snapshot"), "the original error: \(error)")
        }
        assertNothingLeft(steps, nextIDBefore: nil)
        XCTAssertEqual(c.nextNumber(), 1)
        XCTAssertEqual(c.snapshotNumbers(), [])
    }

    /// The flush or crsnap's freeze failing in pre-dump (the freeze timing out).
    func testFailingFlushOrFreezeInPreDumpDiscardsEverything() throws {
        for step in ["flush", "freeze"] {
            let steps = try FakeTakeSteps(container: c)
            steps.failFlush = step == "flush"
            steps.failFreeze = step == "freeze"
            XCTAssertThrowsError(try take(steps)) { error in
                XCTAssertEqual(error as? FakeTakeSteps.Injected, .init(at: step))
            }
            assertNothingLeft(steps, nextIDBefore: nil)
            XCTAssertFalse(steps.calls.contains { $0.hasPrefix("snapshot") }, "no snapshot after a failed \(step)")
        }
    }

    func testCriuFailingAfterPostDumpRemovesStagingAndTheFsVolume() throws {
        let steps = try FakeTakeSteps(container: c)
        steps.failDumpAfterPostDump = true
        XCTAssertThrowsError(try take(steps)) { error in
            XCTAssertEqual(error as? FakeTakeSteps.Injected, .init(at: "criu after post-dump"))
        }
        assertNothingLeft(steps, nextIDBefore: nil)
        XCTAssertEqual(steps.deletedVolumes, ["\(c.snapshotsDir)/.staging-1/fs"],
                       "the fs snapshot is deleted as a volume, not just removed as a tree")
    }

    func testCriuFinishingWithoutPostDumpIsAFailure() throws {
        let steps = try FakeTakeSteps(container: c)
        steps.skipPostDump = true
        assertCrsnapError(.failed, containing: ["take web", "post-dump"], try take(steps))
        assertNothingLeft(steps, nextIDBefore: nil)
    }

    func testMissingInventoryIsAFailure() throws {
        let steps = try FakeTakeSteps(container: c)
        steps.writeInventory = false
        assertCrsnapError(.failed, containing: ["inventory.img"], try take(steps))
        assertNothingLeft(steps, nextIDBefore: nil)
        XCTAssertEqual(steps.deletedVolumes.count, 1, "the fs snapshot taken in post-dump is deleted")
    }

    func testAFailedUndoIsReportedWithTheOriginalError() throws {
        let steps = try FakeTakeSteps(container: c)
        steps.failDumpAfterPostDump = true
        steps.failDeleteVolume = true
        assertCrsnapError(.failed, containing: ["injected failure at criu after post-dump", "undo left state behind",
                                                "injected failure at deleteVolume"], try take(steps))
        XCTAssertTrue(steps.calls.contains("ensureThawed"), "thawing still runs after a failed undo")
        XCTAssertFalse(Sys.exists(c.journalPath))
    }

    func testFailureAfterASuccessfulTakeKeepsTheFirstOne() throws {
        _ = try take(try FakeTakeSteps(container: c))
        let steps = try FakeTakeSteps(container: c)
        steps.failSnapshot = true
        XCTAssertThrowsError(try take(steps))
        assertNothingLeft(steps, nextIDBefore: "2\n", number: 2)
        XCTAssertEqual(entries(c.snapshotsDir), ["1"])
        XCTAssertEqual(c.snapshotNumbers(), [1])
    }

    // MARK: numbering

    func testNumbersAreNeverReused() throws {
        let first = try take(try FakeTakeSteps(container: c))
        XCTAssertEqual(first.id, "web@1")
        try FileManager.default.removeItem(atPath: c.snapshotDir(1))
        XCTAssertEqual(c.snapshotNumbers(), [])

        let second = try take(try FakeTakeSteps(container: c))
        XCTAssertEqual(second.id, "web@2")
        XCTAssertEqual(entries(c.snapshotsDir), ["2"])
        XCTAssertEqual(try c.manifest(2).number, 2)
        XCTAssertEqual(nextID, "3\n")
    }

    func testNumberingSurvivesALostNextIDFile() throws {
        _ = try take(try FakeTakeSteps(container: c))
        _ = try take(try FakeTakeSteps(container: c))
        try FileManager.default.removeItem(atPath: c.nextIDPath)
        XCTAssertEqual(c.nextNumber(), 3, "past the highest directory")
        XCTAssertEqual(try take(try FakeTakeSteps(container: c)).id, "web@3")
    }

    func testNextNumberIsPastRecordedAndExistingNumbers() throws {
        try FileManager.default.createDirectory(atPath: c.snapshotDir(4), withIntermediateDirectories: true)
        XCTAssertEqual(c.nextNumber(), 5)
        try Data("9\n".utf8).write(to: URL(fileURLWithPath: c.nextIDPath))
        XCTAssertEqual(c.nextNumber(), 9)
        // A leftover staging directory's number is not handed out again either.
        try FileManager.default.createDirectory(atPath: "\(c.snapshotsDir)/.staging-12", withIntermediateDirectories: true)
        XCTAssertEqual(c.nextNumber(), 13)
    }

    // MARK: listing and deleting

    func testSnapshotsWithoutAManifestAreNotListed() throws {
        _ = try take(try FakeTakeSteps(container: c))
        try FileManager.default.createDirectory(atPath: c.snapshotDir(5), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(c.snapshotsDir)/.staging-6", withIntermediateDirectories: true)
        XCTAssertEqual(c.snapshotNumbers(), [1])
        XCTAssertEqual(c.manifests().map(\.id), ["web@1"])
        assertCrsnapError(.notFound, containing: ["web@5", store.path], try c.manifest(5))
    }

    func testDeleteRemovesTheSnapshotAndItsVolume() throws {
        _ = try take(try FakeTakeSteps(container: c))
        _ = try take(try FakeTakeSteps(container: c))
        try Snapshots.deleteLocked(c, 1)
        XCTAssertEqual(entries(c.snapshotsDir), ["2"])
        XCTAssertEqual(c.snapshotNumbers(), [2])
        XCTAssertEqual(c.nextNumber(), 3)
    }
}
