import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// What the kernel's checkpoint debates asked of a container beyond its
/// pids: its tasks seen from outside (`crsnap top`), for a debugger on the
/// host.
final class NamespaceTests: XCTestCase {
    var started: [String] = []

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        for name in started { _ = try? crsnap(["rm", "--force", name]) }
    }

    /// A python init with three named threads and a child `sleep`.
    static let threadsProgram = """
    import ctypes, subprocess, threading, time
    libc = ctypes.CDLL(None)
    def worker(i):
        libc.prctl(15, f"worker{i}".encode(), 0, 0, 0)  # PR_SET_NAME
        time.sleep(100000)
    subprocess.Popen(["sleep", "100000"])
    for i in range(3):
        threading.Thread(target=worker, args=(i,), daemon=True).start()
    open("/tmp/ready", "w").close()
    time.sleep(100000)
    """

    func topRows(_ name: String, threads: Bool = false) throws -> [[String: Any]] {
        jsonObjects(try crsnapOK(["top", name, "--json"] + (threads ? ["--threads"] : [])))
    }

    func int(_ v: Any?) -> Int { (v as? NSNumber)?.intValue ?? -1 }

    func testTopListsTheTasksWithHostPidsADebuggerAttachesTo() throws {
        let name = uniqueName("top")
        try crsnapOK(["run", name, "--", "python3", "-c", Self.threadsProgram])
        started.append(name)
        let c = TestContainer(name: name, overlay: true)
        XCTAssertTrue(waitFor(20) { FileManager.default.fileExists(atPath: "\(c.filesDir)/tmp/ready") })
        XCTAssertTrue(waitFor(10) { (try? self.topRows(name).count) == 2 }, "python and its sleep")

        let rows = try topRows(name, threads: true)
        XCTAssertEqual(rows.map { int($0["pid"]) }, [1, 2], "ordered by the pid inside")
        let initRow = rows[0], sleep = rows[1]
        XCTAssertNil(initRow["ppid"], "the init's parent is outside")
        XCTAssertEqual(int(sleep["ppid"]), 1)
        XCTAssertEqual(sleep["command"] as? String, "sleep 100000")
        XCTAssertTrue((initRow["command"] as? String ?? "").hasPrefix("python3 -c "), "\(initRow)")
        XCTAssertEqual(int(initRow["threads"]), 4)
        XCTAssertGreaterThan(int(initRow["rss_bytes"]), 1 << 20)
        XCTAssertTrue((sleep["state"] as? String ?? "").hasPrefix("S"), "\(sleep)")
        // Each host pid is that task: its innermost pid is the one shown.
        for r in rows {
            let status = try String(contentsOfFile: "/proc/\(int(r["host_pid"]))/status", encoding: .utf8)
            let nspid = status.split(separator: "\n").first { $0.hasPrefix("NSpid:") }!.split(separator: "\t").last.map(String.init)
            XCTAssertEqual(nspid, String(int(r["pid"])), "host pid \(int(r["host_pid"]))")
        }
        let threads = try XCTUnwrap(initRow["thread_list"] as? [[String: Any]])
        XCTAssertEqual(threads.count, 4)
        XCTAssertEqual(int(threads[0]["host_tid"]), int(initRow["host_pid"]), "the main thread first")
        XCTAssertEqual(Set(threads.dropFirst().compactMap { $0["name"] as? String }), ["worker0", "worker1", "worker2"])

        // A debugger on the host attaches by those numbers and sees the same threads.
        let gdb = try runProgram("/usr/bin/gdb", ["-p", String(int(initRow["host_pid"])), "-batch", "-nx", "-ex", "info threads"])
        for t in threads {
            XCTAssertTrue(gdb.stdout.contains("(LWP \(int(t["host_tid"])))"), "gdb shows LWP \(int(t["host_tid"])): \(gdb.stdout.suffix(1500))")
        }
        XCTAssertTrue(gdb.stdout.contains("\"worker1\""), gdb.stdout.suffix(1500).description)
        // In-container tools still see the pids inside.
        let ps = try crsnapOK(["exec", name, "--", "ps", "-e", "-o", "pid=,comm="])
        let inside = Dictionary(ps.split(separator: "\n").compactMap { line -> (Int, String)? in
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count == 2, let p = Int(f[0]) else { return nil }
            return (p, String(f[1]))
        }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(inside[1], "python3", ps)
        XCTAssertEqual(inside[2], "sleep", ps)
        // The table has one line per task and thread (the python program's
        // newlines are spaces there).
        let table = try crsnapOK(["top", name, "--threads"]).split(separator: "\n")
        XCTAssertEqual(table.count, 1 + 2 + 4 + 1, table.joined(separator: "\n"))

        // After a rollback the pids inside are the same, the host's are new.
        let id = try crsnapOK(["take", name]).trimmingCharacters(in: .whitespacesAndNewlines)
        try crsnapOK(["rollback", id])
        let after = try topRows(name)
        XCTAssertEqual(after.map { int($0["pid"]) }, [1, 2])
        XCTAssertNotEqual(int(after[0]["host_pid"]), int(initRow["host_pid"]), "restored tasks are new host processes")

        // Bad input.
        let unknown = try crsnap(["top", uniqueName("nosuch")])
        XCTAssertEqual(unknown.status, 3, unknown.stderr)
        XCTAssertTrue(unknown.stderr.contains("no container named"), unknown.stderr)
        try crsnapOK(["stop", name])
        let stopped = try crsnap(["top", name])
        XCTAssertEqual(stopped.status, 4, stopped.stderr)
        XCTAssertTrue(stopped.stderr.contains("is not running"), stopped.stderr)
    }
}
