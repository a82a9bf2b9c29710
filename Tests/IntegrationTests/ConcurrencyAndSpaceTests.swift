import FSSnapshot
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` on a background thread; `wait()` returns its value.
final class Background<T>: @unchecked Sendable {
    private var value: T?
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping () -> T) {
        Thread.detachNewThread {
            self.value = body()
            self.done.signal()
        }
    }

    func wait() -> T {
        done.wait()
        done.signal()
        return value!
    }
}

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let t0 = Date()
    try body()
    return Date().timeIntervalSince(t0)
}

/// Two crsnap processes on one container are serialized by its lock; a take
/// on one container does not wait for another's; ps and list never wait.
final class ConcurrencyTests: ReliabilityCase {
    func testTwoProcessesTakeAndRollbackOnOneContainer() throws {
        let c = try startCounter("it-conc")
        let pids = c.namespacePids
        let deadline = Date().addingTimeInterval(20)
        let workers = (0..<2).map { w in
            Background { () -> [String] in
                var failures: [String] = []
                var mine: [String] = []
                var ops = 0
                while Date() < deadline {
                    ops += 1
                    if mine.isEmpty || Bool.random() {
                        guard let r = try? crsnap(["take", c.name, "--tag", "w\(w)"]) else { continue }
                        if r.status == 0 {
                            mine.append(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
                        } else {
                            failures.append("take: \(r.stderr)")
                        }
                    } else {
                        let id = mine.randomElement()!
                        guard let r = try? crsnap(["rollback", id]) else { continue }
                        if r.status != 0 { failures.append("rollback \(id): \(r.stderr)") }
                    }
                    usleep(UInt32.random(in: 0...200_000))
                }
                return failures + ["ops \(ops)"]
            }
        }
        let results = workers.map { $0.wait() }
        for r in results {
            XCTAssertEqual(r.count, 1, "every take and rollback succeeded: \(r.prefix(3))")
        }
        print("concurrency: \(results.map { $0.last! })")
        XCTAssertGreaterThanOrEqual(try listed(c).count, 2)
        XCTAssertEqual(c.namespacePids, pids)
        // Memory agrees with files, every snapshot verifies, no leftovers.
        try assertHealthy(c, "after two processes took and rolled back for 20 s")
    }

    func testLongTakeBlocksNeitherOtherContainersNorReaders() throws {
        let a = try startCounter("it-longa")
        let b = try startCounter("it-longb")
        try crsnapOK(["take", a.name])
        // A take of `a` that stays inside its freeze for 4 s.
        let long = Background { try? crsnap(["take", a.name], env: ["CRSNAP_FAULT": "sleep=4000:take.post-dump"]) }
        usleep(800_000)
        let second = Background { try? crsnap(["take", a.name]) }
        usleep(200_000)
        XCTAssertLessThan(try seconds { try crsnapOK(["ps"]) }, 2, "ps does not wait for a take")
        XCTAssertLessThan(try seconds { try crsnapOK(["list", a.name]) }, 2, "list does not wait for a take")
        XCTAssertLessThan(try seconds { try crsnapOK(["take", b.name]) }, 3.5, "a take on another container does not wait")
        let r1 = long.wait(), r2 = second.wait()
        XCTAssertEqual(r1?.status, 0, r1?.stderr ?? "")
        XCTAssertEqual(r2?.status, 0, r2?.stderr ?? "")
        // The second take on `a` waited for the lock and came after the first.
        XCTAssertEqual(r1?.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "\(a.name)@2")
        XCTAssertEqual(r2?.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "\(a.name)@3")
        try assertHealthy(a, "after the long take")
        try assertHealthy(b, "the other container")
    }
}

/// A full store: take fails cleanly (no snapshot listed, nothing left in the
/// store, the container running and thawed), rollback either works or
/// changes nothing, and the store works again once there is room.
final class NoSpaceTests: ReliabilityCase {
    /// Writes until the filesystem says ENOSPC (twice, with a commit between,
    /// since btrfs frees and reserves space lazily). Returns bytes written.
    func fill(_ path: String) -> Int {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        defer { close(fd) }
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        for i in chunk.indices { chunk[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
        var total = 0
        for _ in 0..<3 {
            while true {
                let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                if n <= 0 { break }
                total += n
            }
            fsync(fd)
            sync()
        }
        return total
    }

    @discardableResult
    func assertTakeFailsCleanly(_ c: TestContainer, path: String, pids: [pid_t], before: [String], _ what: String,
                                _ extra: [String] = []) throws -> String {
        let r = try crsnap(["take", c.name] + extra, store: path)
        print("take on a \(what): \(r.stderr)")
        XCTAssertEqual(r.status, 1, "\(what): take fails: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("No space left on device"), "\(what): the error says why: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("take \(c.name) failed"), "\(what): the error names the container: \(r.stderr)")
        XCTAssertEqual(r.stdout, "")
        XCTAssertEqual(c.freezerState, "THAWED", "\(what): not left frozen")
        XCTAssertEqual(c.cgroupProcs, pids, "\(what): the same tasks run")
        XCTAssertEqual(dirFingerprint(c.dir), before, "\(what): no staging, journal or snapshot left behind")
        let list = try crsnap(["list", c.name, "--json"], store: path)
        XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [Any])?.count, 1, "\(what): one snapshot listed")
        return r.stderr
    }

    func testFullStore() throws {
        if Btrfs.isBtrfs("/var/tmp") { throw XCTSkip("/var/tmp is itself btrfs here; the small store needs an image") }
        let path = "/var/tmp/crsnap-it-enospc-\(getpid())"
        let name = uniqueName("it-full")
        defer {
            _ = try? crsnap(["rm", "--force", name], store: path)
            if Btrfs.isBtrfs("\(path)/data") { _ = umount2("\(path)/data", Int32(MNT_DETACH)) }
            try? FileManager.default.removeItem(atPath: path)
        }
        let initR = try crsnap(["init"], env: ["CRSNAP_STORE_IMAGE_SIZE": "300M"], store: path)
        XCTAssertEqual(initR.status, 0, initR.stderr)
        // 48 MiB of memory that does not compress away: the images need room.
        let script = "import os,time\nb=os.urandom(48<<20)\nopen('/tmp/ready','w').write('1')\nwhile True: time.sleep(1)\n"
        let run = try crsnap(["run", name, "--", "python3", "-c", script], store: path)
        XCTAssertEqual(run.status, 0, run.stderr)
        started.append((name, path))
        let c = TestContainer(name: name, overlay: true, store: "\(path)/data")
        XCTAssertTrue(waitFor(20) { FileManager.default.fileExists(atPath: "\(c.filesDir)/tmp/ready") })
        let first = try crsnap(["take", name], store: path)
        XCTAssertEqual(first.status, 0, first.stderr)
        let pids = c.cgroupProcs

        let filled = fill("\(path)/data/fill")
        XCTAssertGreaterThan(filled, 50 << 20, "the store was filled")
        let before = dirFingerprint(c.dir)

        // No room even for the journal: refused before anything is made.
        try assertTakeFailsCleanly(c, path: path, pids: pids, before: before, "full store")
        // Room for the journal but not for the images: ENOSPC inside the dump.
        XCTAssertEqual(truncate("\(path)/data/fill", off_t(filled - (8 << 20))), 0)
        sync()
        // Images written by CRIU to the store, inside the freeze:
        let dump = try assertTakeFailsCleanly(c, path: path, pids: pids, before: before, "store with 8 MiB left", ["--stage", "store"])
        XCTAssertTrue(dump.contains("criu dump failed"), "the 8 MiB left let the take reach the dump: \(dump)")
        // Images staged in memory, copied to the store after the thaw:
        let copy = try assertTakeFailsCleanly(c, path: path, pids: pids, before: before, "store with 8 MiB left, staged",
                                              ["--stage", "memory"])
        XCTAssertTrue(copy.contains("images.store"), "the copy into the store ran out of room: \(copy)")
        XCTAssertEqual(mountsBelow(c.dir + "/snapshots"), [], "no staging tmpfs left")

        // A rollback on the full store (its clone is made before the tasks are
        // stopped): it works, or it fails with nothing changed.
        let rb = try crsnap(["rollback", "\(name)@1"], store: path)
        if rb.status == 0 {
            print("rollback on a full store succeeded")
        } else {
            print("rollback on a full store: \(rb.stderr)")
            XCTAssertEqual(rb.status, 1)
            XCTAssertTrue(rb.stderr.contains("nothing was changed; the container runs on"), rb.stderr)
            XCTAssertEqual(c.cgroupProcs, pids, "rollback that failed on a full store left the tasks running")
            XCTAssertEqual(dirFingerprint(c.dir), before)
        }
        XCTAssertEqual(c.freezerState, "THAWED")
        XCTAssertFalse(c.cgroupProcs.isEmpty, "the container runs")

        // Room again: the store works.
        try FileManager.default.removeItem(atPath: "\(path)/data/fill")
        sync()
        var id = ""
        for _ in 0..<10 where id.isEmpty {
            // btrfs returns freed extents at a transaction commit.
            let t = try crsnap(["take", name], store: path)
            if t.status == 0 { id = t.stdout.trimmingCharacters(in: .whitespacesAndNewlines) } else { sleep(1) }
        }
        XCTAssertFalse(id.isEmpty, "take works once there is room")
        let v = try crsnap(["verify", id], store: path)
        XCTAssertEqual(v.status, 0, v.stderr)
    }
}
