import FSSnapshot
import Foundation
@testable import ProcessCR
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Reading the locks CRIU recorded, the kernel's view of the locks a process
/// holds, and the repair's decisions, with the ptrace step faked.
final class FileLocksTests: XCTestCase {
    func varintField(_ n: UInt64, _ v: UInt64) -> [UInt8] { ImageFixture.varintField(n, v) }

    /// A FileLockEntry: flag, type, pid, fd, start, len (int32/int64 as varints).
    func entry(flag: UInt64, type: UInt64, pid: Int32, fd: Int32, start: Int64, len: Int64) -> [UInt8] {
        varintField(1, flag) + varintField(2, type) + varintField(3, UInt64(bitPattern: Int64(pid)))
            + varintField(4, UInt64(bitPattern: Int64(fd))) + varintField(5, UInt64(bitPattern: start))
            + varintField(6, UInt64(bitPattern: len))
    }

    // FILE_LOCKS_MAGIC
    func image(_ entries: [[UInt8]]) -> [UInt8] { ImageFixture.image(magic: 0x5432_3616, entries) }

    func tempDir() throws -> String {
        let dir = NSTemporaryDirectory() + "crsnap-locks-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    func testTheLocksCriuRecordedAreRead() throws {
        let dir = try tempDir()
        XCTAssertEqual(try FileLocks.recorded(imagesDir: dir), [], "no image: no locks")
        try Sys.writeAtomically("\(dir)/filelocks.img", image([
            entry(flag: 1, type: 0, pid: 1, fd: 3, start: 10, len: 1),
            entry(flag: 1, type: 1, pid: 1, fd: 3, start: 100, len: 10),
            entry(flag: 2, type: 1, pid: 1, fd: 5, start: 0, len: 0),
            entry(flag: 4, type: 1, pid: -1, fd: 6, start: 0, len: 5),
            entry(flag: 1, type: 1, pid: 7, fd: 4, start: 1 << 40, len: 0),
        ]))
        let locks = try FileLocks.recorded(imagesDir: dir)
        XCTAssertEqual(locks, [
            FileLock(kind: .posix, write: false, pid: 1, fd: 3, start: 10, length: 1),
            FileLock(kind: .posix, write: true, pid: 1, fd: 3, start: 100, length: 10),
            FileLock(kind: .flock, write: true, pid: 1, fd: 5),
            FileLock(kind: .ofd, write: true, pid: -1, fd: 6, start: 0, length: 5),
            FileLock(kind: .posix, write: true, pid: 7, fd: 4, start: 1 << 40, length: 0),
        ])
        XCTAssertEqual(locks[1].description, "POSIX write lock on bytes 100-109")
        XCTAssertEqual(locks[4].description, "POSIX write lock on bytes 1099511627776-EOF")
        XCTAssertEqual(locks[2].description, "flock write lock on the whole file")
    }

    func testADamagedImageIsAnError() throws {
        let dir = try tempDir()
        var bad = image([entry(flag: 1, type: 0, pid: 1, fd: 3, start: 10, len: 1)])
        bad.removeLast(2)
        try Sys.writeAtomically("\(dir)/filelocks.img", bad)
        XCTAssertThrowsError(try FileLocks.recorded(imagesDir: dir))
        try Sys.writeAtomically("\(dir)/filelocks.img", image([entry(flag: 16, type: 0, pid: 1, fd: 3, start: 0, len: 0)]))
        XCTAssertThrowsError(try FileLocks.recorded(imagesDir: dir)) { XCTAssertTrue("\($0)".contains("unknown lock kind 16")) }
        try Sys.writeAtomically("\(dir)/filelocks.img", image([varintField(1, 1)]))
        XCTAssertThrowsError(try FileLocks.recorded(imagesDir: dir)) { XCTAssertTrue("\($0)".contains("lacks a required field")) }
    }

    func testFdinfoLockLinesAreParsed() {
        let text = "pos:\t0\nflags:\t02100002\nmnt_id:\t27\nino:\t16220165\n"
            + "lock:\t1: POSIX  ADVISORY  READ 19158 fe:00:16220165 10 10\n"
            + "lock:\t2: POSIX  ADVISORY  WRITE 19158 fe:00:16220165 100 EOF\n"
            + "lock:\t3: OFDLCK ADVISORY  WRITE -1 fe:00:16220167 5 9\n"
        let held = FileLocks.parseFdinfo(text)
        XCTAssertEqual(held, [HeldLock(kind: "POSIX", write: false, start: 10, end: 10),
                              HeldLock(kind: "POSIX", write: true, start: 100, end: nil),
                              HeldLock(kind: "OFDLCK", write: true, start: 5, end: 9)])
        XCTAssertTrue(FileLock(kind: .posix, write: true, pid: 1, fd: 3, start: 100, length: 0).isHeld(as: held[1]))
        XCTAssertFalse(FileLock(kind: .posix, write: false, pid: 1, fd: 3, start: 100, length: 0).isHeld(as: held[1]))
        XCTAssertFalse(FileLock(kind: .posix, write: true, pid: 1, fd: 3, start: 100, length: 10).isHeld(as: held[1]))
        XCTAssertTrue(FileLock(kind: .ofd, write: true, pid: -1, fd: 6, start: 5, length: 5).isHeld(as: held[2]))
    }

    /// A fake kernel: what each (host pid, fd) holds; `take` adds to it
    /// unless told to fail.
    final class FakeTable {
        var held: [String: [HeldLock]] = [:]
        var takes: [(pid_t, [FileLock])] = []
        var refuse: Int32 = 0

        func repair() -> LockRepair {
            var r = LockRepair()
            r.held = { pid, fd in self.held["\(pid)/\(fd)"] ?? [] }
            r.take = { pid, locks in
                self.takes.append((pid, locks))
                return locks.map { l in
                    if self.refuse != 0 { return self.refuse }
                    self.held["\(pid)/\(l.fd)", default: []].append(
                        HeldLock(kind: l.kind == .posix ? "POSIX" : l.kind == .ofd ? "OFDLCK" : "FLOCK",
                                 write: l.write, start: l.start, end: l.end))
                    return 0
                }
            }
            r.describe = { host, pid, fd in ("process \(pid) (python3; host pid \(host))", "/data/file\(fd)") }
            return r
        }
    }

    let locks = [
        FileLock(kind: .posix, write: false, pid: 1, fd: 3, start: 10, length: 1),
        FileLock(kind: .posix, write: true, pid: 1, fd: 3, start: 100, length: 10),
        FileLock(kind: .flock, write: true, pid: 1, fd: 5),
        FileLock(kind: .posix, write: false, pid: 2, fd: 7, start: 128, length: 1),
        FileLock(kind: .lease, write: false, pid: 2, fd: 8),
    ]

    func testOnlyTheMissingLocksAreTakenAgainInTheirOwnProcess() throws {
        let k = FakeTable()
        k.held["101/5"] = [HeldLock(kind: "FLOCK", write: true, start: 0, end: nil)]
        k.held["102/7"] = [HeldLock(kind: "POSIX", write: false, start: 128, end: 128)]
        let report = try k.repair().run(recorded: locks, tasks: [1: 101, 2: 102])
        XCTAssertEqual(report.checked, 4, "leases are not checked")
        XCTAssertEqual(report.repaired, Array(locks[0...1]))
        XCTAssertEqual(k.takes.count, 1)
        XCTAssertEqual(k.takes.first?.0, 101)
        XCTAssertEqual(k.takes.first?.1, Array(locks[0...1]))
    }

    func testNothingIsTakenWhenNothingWasLost() throws {
        let k = FakeTable()
        k.held["101/3"] = [HeldLock(kind: "POSIX", write: false, start: 10, end: 10),
                           HeldLock(kind: "POSIX", write: true, start: 100, end: 109)]
        k.held["101/5"] = [HeldLock(kind: "FLOCK", write: true, start: 0, end: nil)]
        k.held["102/7"] = [HeldLock(kind: "POSIX", write: false, start: 128, end: 128)]
        let report = try k.repair().run(recorded: locks, tasks: [1: 101, 2: 102])
        XCTAssertEqual(report.repaired, [])
        XCTAssertTrue(k.takes.isEmpty)
    }

    func testALockThatCannotBeTakenNamesTheProcessFileAndRange() throws {
        let k = FakeTable()
        k.refuse = EAGAIN
        k.held["101/5"] = [HeldLock(kind: "FLOCK", write: true, start: 0, end: nil)]
        k.held["102/7"] = [HeldLock(kind: "POSIX", write: false, start: 128, end: 128)]
        XCTAssertThrowsError(try k.repair().run(recorded: locks, tasks: [1: 101, 2: 102])) { error in
            let problems = (error as? LockRepair.Failure)?.problems ?? []
            XCTAssertEqual(problems.count, 2, "\(error)")
            XCTAssertEqual(problems.last, "process 1 (python3; host pid 101) lost its POSIX write lock on bytes 100-109 of /data/file3 (fd 3): the process's own fcntl said: Resource temporarily unavailable")
        }
    }

    func testAProcessMissingFromTheRestoredTreeIsAFailure() throws {
        let k = FakeTable()
        XCTAssertThrowsError(try k.repair().run(recorded: [locks[3]], tasks: [1: 101])) { error in
            XCTAssertTrue("\(error)".contains("process 2 held a POSIX read lock on bytes 128-128 (fd 7) but is not among the restored processes"), "\(error)")
        }
    }

    func testAnInjectionThatFailsNamesEveryLockItWasFor() throws {
        var r = FakeTable().repair()
        r.take = { pid, _ in throw SystemError("take file locks inside the process (attach (PTRACE_SEIZE))", "pid \(pid)", errno: EPERM) }
        XCTAssertThrowsError(try r.run(recorded: Array(locks[0...1]), tasks: [1: 101])) { error in
            let problems = (error as? LockRepair.Failure)?.problems ?? []
            XCTAssertEqual(problems.count, 2)
            XCTAssertTrue(problems.allSatisfy { $0.contains("PTRACE_SEIZE") }, "\(problems)")
        }
    }

    func testLocksSharedWithProcessesOutsideAreNamed() {
        let table = """
        1: POSIX  ADVISORY  WRITE 500 00:31:275 100 109
        1: -> POSIX  ADVISORY  WRITE 900 00:31:275 100 109
        2: FLOCK  ADVISORY  WRITE 501 00:31:276 0 EOF
        3: POSIX  ADVISORY  READ 500 00:31:277 0 0
        3: POSIX  ADVISORY  READ 901 00:31:277 10 20
        3: POSIX  ADVISORY  READ 902 00:31:277 10 20
        4: OFDLCK ADVISORY  WRITE -1 00:31:278 0 4
        4: OFDLCK ADVISORY  WRITE -1 00:31:278 5 9
        5: POSIX  ADVISORY  WRITE 903 00:31:279 0 EOF

        """
        let shared = FileLocks.shared(by: [500, 501], procLocks: table, name: { _, ino in "/data/\(ino)" },
                                      process: { _ in "sqlite3" })
        XCTAssertEqual(shared.map(\.file), ["/data/275", "/data/277"], "a waiter counts; OFD owners are unknown; other files are not ours")
        XCTAssertEqual(shared.first?.lock, "POSIX write lock on bytes 100-109")
        XCTAssertEqual(shared.first?.outside, ["pid 900 (sqlite3)"])
        XCTAssertEqual(shared.last?.outside, ["pid 901 (sqlite3)", "pid 902 (sqlite3)"])
        XCTAssertTrue(shared.last!.description.contains("outside the container also lock;"), shared.last!.description)
        XCTAssertEqual(FileLocks.shared(by: [903], procLocks: table, name: { _, _ in nil }, process: { _ in "" }), [])
    }

    func testARestoreWaitingForAnOutsideLockIsSeen() {
        let table = """
        1: POSIX  ADVISORY  WRITE 900 00:31:275 0 9
        1: -> POSIX  ADVISORY  WRITE 500 00:31:275 0 9
        2: FLOCK  ADVISORY  WRITE 501 00:31:276 0 EOF
        2: -> FLOCK  ADVISORY  WRITE 502 00:31:276 0 EOF
        3: OFDLCK ADVISORY  WRITE -1 00:31:277 0 EOF
        3: -> POSIX  ADVISORY  READ 503 00:31:277 5 5

        """
        let waiting = FileLocks.waitingOnOutside([500, 501, 502, 503], procLocks: table, name: { _, ino in "/vol/\(ino)" },
                                                 process: { _ in "python3" })
        XCTAssertEqual(waiting.map(\.file), ["/vol/275", "/vol/277"], "a wait on one of the tree's own locks is not the outside's")
        XCTAssertEqual(waiting.first?.lock, "POSIX write lock on bytes 0-9")
        XCTAssertEqual(waiting.first?.outside, ["pid 900 (python3)"])
        XCTAssertEqual(waiting.last?.outside, ["an OFD lock (no owning process)"])
    }

    func testTasksStoppedAtTheDumpAreKnownFromTheirCoreImage() throws {
        let dir = try tempDir()
        func core(state: UInt64) -> [UInt8] {
            // CoreEntry: 1 mtype, 3 tc (TaskCoreEntry: 1 task_state, 2 exit_code)
            let tc = varintField(1, state) + varintField(2, 0)
            return varintField(1, 1) + Wire.lengthDelimited(3, tc)
        }
        try Sys.writeAtomically("\(dir)/core-1.img", image([core(state: 1)]))
        try Sys.writeAtomically("\(dir)/core-2.img", image([core(state: 3)]))
        XCTAssertFalse(StoppedTree.wasStopped(imagesDir: dir, pid: 1))
        XCTAssertTrue(StoppedTree.wasStopped(imagesDir: dir, pid: 2))
        XCTAssertFalse(StoppedTree.wasStopped(imagesDir: dir, pid: 3))
    }
}
