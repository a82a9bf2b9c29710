import FSSnapshot
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// One line of the kernel's lock table (/proc/locks), in the container's
/// terms: the holder's pid inside the container and the file's path instead
/// of host pids and device:inode numbers, which a restore changes.
struct LockLine: Hashable, Comparable, CustomStringConvertible {
    let pid: Int32
    let kind: String
    let mode: String
    let file: String
    let start: String
    let end: String
    /// A request waiting for the lock ("->" in /proc/locks), not a lock held.
    let waiting: Bool

    var description: String { "\(waiting ? "waits " : "")\(pid) \(kind) \(mode) \(file) \(start)-\(end)" }
    static func < (a: LockLine, b: LockLine) -> Bool { a.description < b.description }
}

/// The lines of /proc/locks that belong to the container's processes, sorted.
func lockTable(_ c: TestContainer) -> [LockLine] {
    var inside: [String: Int32] = [:]
    var files: [String: String] = [:]
    for pid in c.cgroupProcs {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        if let l = status.split(separator: "\n").first(where: { $0.hasPrefix("NSpid:") }),
           let ns = l.split(whereSeparator: { $0 == " " || $0 == "\t" }).last.flatMap({ Int32($0) }) {
            inside["\(pid)"] = ns
        }
        for fd in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? [] {
            var st = stat()
            guard stat("/proc/\(pid)/fd/\(fd)", &st) == 0, st.st_mode & S_IFMT == S_IFREG,
                  let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)") else { continue }
            // By inode number alone: on an overlay root /proc/locks names the
            // device of the overlay's own inode, stat(2) another one.
            files["\(st.st_ino)"] = path
        }
    }
    let text = (try? String(contentsOfFile: "/proc/locks", encoding: .utf8)) ?? ""
    var out: [LockLine] = []
    for line in text.split(separator: "\n") {
        // "1: POSIX  ADVISORY  WRITE 71 00:30:260 100 109", "1: -> POSIX ..."
        var w = line.split(separator: " ").map(String.init).dropFirst()
        let waiting = w.first == "->"
        if waiting { w = w.dropFirst() }
        let f = Array(w)
        guard f.count >= 6, let ino = f[4].split(separator: ":").last, let file = files[String(ino)] else { continue }
        let pid: Int32
        if f[3] == "-1" { pid = -1 } else if let p = inside[f[3]] { pid = p } else { continue }
        out.append(LockLine(pid: pid, kind: f[0], mode: f[2], file: file, start: f[5], end: f.count > 6 ? f[6] : "?", waiting: waiting))
    }
    return out.sorted()
}

/// Every file lock a container's processes hold at the take instant — POSIX
/// record locks (on files they also map shared, which CRIU 4.2 loses on
/// restore), OFD locks, flock — and every request waiting for one, are there
/// again after rollback and after resume; a lock that cannot come back fails
/// the rollback cleanly.
final class FileLockTests: XCTestCase {
    var cname = ""

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        if !cname.isEmpty { _ = try? crsnap(["rm", "--force", cname]) }
    }

    func said() throws -> [String] {
        try crsnap(["logs", cname]).stdout.split(separator: "\n").map(String.init)
    }

    func count(_ line: String) -> Int { ((try? said()) ?? []).filter { $0 == line }.count }

    func startLocks(rootfs: Bool, env: [String: String] = [:]) throws -> TestContainer {
        cname = uniqueName(rootfs ? "it-lock-sub" : "it-lock")
        var run = ["run", cname]
        if rootfs { run += ["--rootfs", Env.rootfs!] }
        try crsnapOK(run + ["--", "python3", "-c", workloadText("locks.py")], env: env)
        let c = TestContainer(name: cname, overlay: !rootfs)
        XCTAssertTrue(waitFor(60) { self.count("ready") == 1 && lockTable(c).contains { $0.waiting } },
                      "the workload holds its locks and the waiter waits: \((try? self.said()) ?? []) \(lockTable(c))")
        return c
    }

    /// The table the workload sets up, checked once, so a comparison with it
    /// means something.
    func checkShape(_ t: [LockLine]) {
        let held = t.filter { !$0.waiting }
        func has(_ kind: String, _ mode: String, _ file: String, _ start: String, _ end: String) -> Bool {
            held.contains { $0.kind == kind && $0.mode == mode && $0.file.hasSuffix("/crsnap-locks/\(file)") && $0.start == start && $0.end == end }
        }
        XCTAssertTrue(has("POSIX", "READ", "mapped", "10", "10"), "\(t)")
        XCTAssertTrue(has("POSIX", "WRITE", "mapped", "100", "109"), "\(t)")
        XCTAssertTrue(has("POSIX", "READ", "shm", "128", "128"), "\(t)")
        XCTAssertTrue(has("FLOCK", "WRITE", "flocked", "0", "EOF"), "\(t)")
        XCTAssertTrue(has("OFDLCK", "WRITE", "ofd", "0", "4"), "\(t)")
        XCTAssertEqual(t.filter { $0.waiting }.count, 1, "\(t)")
    }

    func roundTrip(rootfs: Bool) throws {
        let c = try startLocks(rootfs: rootfs)
        let before = lockTable(c)
        checkShape(before)

        try crsnapOK(["take", cname])
        XCTAssertEqual(lockTable(c), before, "take leaves the locks alone")

        // Change the table: the holder lets go, the waiter takes the lock.
        try crsnapOK(["exec", cname, "--", "kill", "-USR1", "1"])
        XCTAssertTrue(waitFor(30) { self.count("waiter got the lock") == 1 }, "\((try? said()) ?? [])")
        XCTAssertNotEqual(lockTable(c), before)

        let rollback = try JSONSerialization.jsonObject(with: Data(try crsnapOK(["rollback", "\(cname)@1", "--json"]).utf8)) as? [String: Any]
        XCTAssertEqual(lockTable(c), before, "after rollback every lock and the waiting request are back")
        // Five locks held, three of them POSIX locks on files mapped shared:
        // those three are the ones CRIU 4.2 loses and crsnap takes again (a
        // CRIU with the fix in docs/criu-file-locks loses none).
        let stats = rollback?["stats"] as? [String: Any] ?? [:]
        XCTAssertEqual(stats["locks_checked"] as? Int, 5, "\(stats)")
        XCTAssertTrue([0, 3].contains(stats["locks_repaired"] as? Int ?? -1), "\(stats)")
        XCTAssertNotNil(stats["lock_repair_ms"] as? Double, "\(stats)")
        let log = try crsnap(["logs", cname]).stdout
        XCTAssertTrue(log.contains("taken again"), "the monitor says what it repaired: \(log)")

        // The same after take --stop and resume (on the subvolume root a lazy
        // one: the tasks come back stopped, the daemon brings all their
        // memory back, then the locks are taken again).
        try crsnapOK(["take", cname, "--stop"])
        XCTAssertTrue(c.cgroupProcs.isEmpty)
        try crsnapOK(["resume", cname] + (rootfs ? ["--lazy"] : []))
        XCTAssertEqual(lockTable(c), before, "after resume every lock and the waiting request are back")

        // The restored waiter still waits, and gets the lock once it is let go.
        usleep(300_000)
        XCTAssertEqual(count("waiter got the lock"), 1, "the waiter waits after the restores")
        try crsnapOK(["exec", cname, "--", "kill", "-USR1", "1"])
        XCTAssertTrue(waitFor(30) { self.count("waiter got the lock") == 2 }, "\((try? said()) ?? [])")
        XCTAssertEqual(lockTable(c).filter { $0.waiting }.count, 0)
        // Every process of the tree runs: nothing was left stopped.
        for pid in c.cgroupProcs {
            let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
            let state = stat.split(separator: ")").last?.split(separator: " ").first ?? "?"
            XCTAssertNotEqual(state, "T", "pid \(pid) left stopped")
        }
    }

    func testLocksSurviveRollbackAndResumeOnTheOverlayRoot() throws {
        try roundTrip(rootfs: false)
    }

    func testLocksSurviveRollbackAndResumeOnASubvolumeRoot() throws {
        try roundTrip(rootfs: true)
    }

    /// SQLite in WAL mode under a write load, rolled back to random
    /// snapshots; after each rollback a second process opens the database:
    /// the writer lives on (no SIGBUS from a truncated WAL index), SQLite's
    /// integrity check says ok, and the rows are exactly 1..N.
    func sqliteRollbacks(rootfs: Bool) throws {
        cname = uniqueName(rootfs ? "it-sqlite-sub" : "it-sqlite")
        var run = ["run", cname]
        if rootfs { run += ["--rootfs", Env.rootfs!] }
        try crsnapOK(run + ["--", "python3", "-c", workloadText("sqlite_writer.py")])
        let c = TestContainer(name: cname, overlay: !rootfs)
        XCTAssertTrue(waitFor(60) { self.count("ready") == 1 }, "\((try? self.said()) ?? [])")
        let writer = c.cgroupProcs

        /// (integrity, count, min, max) as a second process sees them, or
        /// what went wrong.
        func look() throws -> (seen: (ok: String, count: Int, low: Int, high: Int)?, why: String) {
            let r = try crsnap(["exec", cname, "--", "python3", "-c", workloadText("sqlite_check.py")])
            let w = r.stdout.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            guard r.status == 0, w.count == 4, let n = Int(w[1]), let lo = Int(w[2]), let hi = Int(w[3]) else {
                return (nil, "exit \(r.status): \(r.stdout) \(r.stderr)")
            }
            return ((w[0], n, lo, hi), "")
        }
        /// The number of rows, after checking them; nil (and a failure) when
        /// the database cannot be read.
        func rows(_ when: String) throws -> Int? {
            let l = try look()
            guard let r = l.seen else {
                XCTFail("\(when): the second opener failed: \(l.why)\nlog: \(try crsnap(["logs", cname]).stdout)")
                return nil
            }
            XCTAssertEqual(r.ok, "ok", "\(when): integrity_check")
            XCTAssertEqual(r.low, r.count > 0 ? 1 : 0, "\(when): rows start at 1")
            XCTAssertEqual(r.high, r.count, "\(when): rows are exactly 1..N")
            return r.count
        }

        var snapshots: [Int] = []
        for _ in 0..<3 {
            usleep(UInt32.random(in: 150_000...500_000))
            let id = try crsnapOK(["take", cname]).trimmingCharacters(in: .whitespacesAndNewlines)
            snapshots.append(Int(id.split(separator: "@").last ?? "") ?? 0)
        }
        guard try rows("before any rollback") != nil else { return }
        for round in 1...4 {
            usleep(UInt32.random(in: 100_000...400_000))
            let n = snapshots.randomElement()!
            try crsnapOK(["rollback", "\(cname)@\(n)"])
            guard let after = try rows("right after rollback \(round) to @\(n)") else { return }
            // The writer must live on and go on from where its memory is.
            let writes = waitFor(10) {
                ((try? look())?.seen?.high ?? 0) > after + 20
            }
            // Each rollback's kill logs status 137; a SIGBUS would be 135.
            let log = try crsnap(["logs", cname]).stdout
            XCTAssertEqual(log.components(separatedBy: "exited with status").count - 1,
                           log.components(separatedBy: "exited with status 137").count - 1,
                           "rollback \(round): the writer died: \(log)")
            guard writes else { return XCTFail("rollback \(round): the writer does not write on: \(log)") }
            guard try rows("after rollback \(round) and more writes") != nil else { return }
        }
        XCTAssertEqual(c.cgroupProcs.count, writer.count)
    }

    func testSQLiteInWALModeSurvivesRandomRollbacksOnTheOverlayRoot() throws {
        try sqliteRollbacks(rootfs: false)
    }

    func testSQLiteInWALModeSurvivesRandomRollbacksOnASubvolumeRoot() throws {
        try sqliteRollbacks(rootfs: true)
    }

    /// Starts a container running the Python `script` with a fresh host
    /// directory mounted at /vol; returns that directory (removed at the end).
    func startOnVolume(_ prefix: String, _ script: String) throws -> String {
        cname = uniqueName(prefix)
        let host = "\(Env.store!)/\(cname)-vol"
        try FileManager.default.createDirectory(atPath: host, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: host) }
        try crsnapOK(["run", cname, "--volume", "\(host):/vol", "--", "python3", "-c", script])
        XCTAssertTrue(waitFor(60) { self.count("ready") == 1 }, "\((try? self.said()) ?? [])")
        return host
    }

    /// A host process (outside every container) holding a lock on `path`:
    /// lockf(LOCKTYPE, len, start). Killed at the end of the test.
    func lockOutside(_ path: String, _ lockType: String, _ len: Int, _ start: Int) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = ["-c", "import fcntl, os, time\nfd = os.open('\(path)', os.O_RDWR)\n"
                       + "fcntl.lockf(fd, fcntl.\(lockType) | fcntl.LOCK_NB, \(len), \(start))\ntime.sleep(120)\n"]
        try p.run()
        addTeardownBlock { if p.isRunning, p.processIdentifier > 1 { kill(p.processIdentifier, SIGKILL) }; p.waitUntilExit() }
        XCTAssertTrue(waitFor(10) { ((try? String(contentsOfFile: "/proc/locks", encoding: .utf8)) ?? "").contains(" \(p.processIdentifier) ") })
        return p
    }

    /// A lock on a file that a process outside the container locks too (a
    /// volume) is named by take as outside the instant.
    func testALockSharedWithTheOutsideIsNamedByTake() throws {
        let host = try startOnVolume("it-lock-vol", "import fcntl, os, time\nfd = os.open('/vol/shared', os.O_RDWR | os.O_CREAT)\n"
            + "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)\nprint('ready', flush=True)\ntime.sleep(1 << 30)\n")
        // Nobody outside: no warning.
        let quiet = try crsnap(["take", cname, "--json"])
        XCTAssertEqual(quiet.status, 0, quiet.stderr)
        XCTAssertFalse(quiet.stdout.contains("warnings"), quiet.stdout)

        let outside = try lockOutside("\(host)/shared", "LOCK_SH", 10, 100)

        let r = try crsnap(["take", cname, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let result = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let warnings = result["warnings"] as? [String] ?? []
        XCTAssertEqual(warnings.count, 1, r.stdout)
        XCTAssertTrue(warnings.first?.contains("/vol/shared") == true, "\(warnings)")
        XCTAssertTrue(warnings.first?.contains("POSIX write lock on bytes 0-9") == true, "\(warnings)")
        XCTAssertTrue(warnings.first?.contains("pid \(outside.processIdentifier) (python3)") == true, "\(warnings)")
        XCTAssertTrue(r.stderr.contains("crsnap: warning: file lock shared with processes outside the container"), r.stderr)
    }

    /// A lock of the snapshot that a process outside the container holds by
    /// the time of the rollback (on a volume): CRIU's restore would wait for
    /// it for as long as the outsider keeps it. The rollback fails after a
    /// few seconds instead, naming the file, the range and the holder, and
    /// the state from before the rollback runs again.
    func testALockHeldOutsideAtRollbackTimeFailsTheRollbackCleanly() throws {
        let host = try startOnVolume("it-lock-out", "import fcntl, os, signal, time\nfd = os.open('/vol/f', os.O_RDWR | os.O_CREAT)\n"
            + "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)\n"
            + "signal.signal(signal.SIGUSR1, lambda *a: (fcntl.lockf(fd, fcntl.LOCK_UN, 10, 0), print('released', flush=True)))\n"
            + "print('ready', flush=True)\nwhile True:\n    time.sleep(1)\n")
        try crsnapOK(["take", cname])
        try crsnapOK(["exec", cname, "--", "kill", "-USR1", "1"])
        XCTAssertTrue(waitFor(30) { self.count("released") == 1 })

        let outside = try lockOutside("\(host)/f", "LOCK_EX", 10, 0)

        let started = Date()
        let r = try crsnap(["rollback", "\(cname)@1"])
        XCTAssertLessThan(Date().timeIntervalSince(started), 60, "the rollback does not wait for the outsider")
        XCTAssertNotEqual(r.status, 0)
        for part in ["waited 3 s for file locks", "/vol/f: the snapshot's POSIX write lock on bytes 0-9",
                     "held by pid \(outside.processIdentifier) (python3) outside the container",
                     "back in the state from before the rollback"] {
            XCTAssertTrue(r.stderr.contains(part), "\(part) in: \(r.stderr)")
        }
        XCTAssertTrue(try crsnap(["ps", "--json"]).stdout.contains("\"running\""))
        XCTAssertTrue(outside.isRunning, "the outsider keeps its lock")
        // The pre-rollback state runs and works: it can be rolled back to.
        try crsnapOK(["exec", cname, "--", "true"])
    }

    /// A lost lock that cannot be taken again (as if another process held
    /// it) fails the rollback with a message naming the process, the file and
    /// the range, and the state from before the rollback comes back — with
    /// its own locks.
    func testALockThatCannotComeBackFailsTheRollbackCleanly() throws {
        let c = try startLocks(rootfs: false, env: ["CRSNAP_FAULT": "failonce:monitor.lock-repair", "CRSNAP_TEST_HOOKS": "1"])
        let before = lockTable(c)
        checkShape(before)
        try crsnapOK(["take", cname])
        try crsnapOK(["exec", cname, "--", "kill", "-USR1", "1"])
        XCTAssertTrue(waitFor(30) { self.count("waiter got the lock") == 1 })
        let changed = lockTable(c)

        let r = try crsnap(["rollback", "\(cname)@1"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("could not be restored"), r.stderr)
        XCTAssertTrue(r.stderr.contains("POSIX write lock on bytes 100-109"), r.stderr)
        XCTAssertTrue(r.stderr.contains("crsnap-locks/mapped"), r.stderr)
        XCTAssertTrue(r.stderr.contains("process 1 (python3"), r.stderr)
        XCTAssertTrue(r.stderr.contains("back in the state from before the rollback"), r.stderr)
        XCTAssertEqual(lockTable(c), changed, "the pre-rollback state runs, with its own locks")
        XCTAssertEqual(count("waiter got the lock"), 1)
    }
}
