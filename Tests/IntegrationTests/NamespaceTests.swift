import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// What the kernel's checkpoint debates asked of a container beyond its
/// pids: clocks of its own that carry on across a rollback (a time
/// namespace, which `exec` joins), reboot and poweroff from inside (reboot(2)
/// in its pid namespace ends only that namespace), and its tasks seen from
/// outside (`crsnap top`), for a debugger on the host.
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

    /// CLOCK_MONOTONIC and CLOCK_BOOTTIME into /tmp/mono every 50 ms; an
    /// interval timer (ITIMER_REAL, every 0.5 s from the start) appends the
    /// monotonic time of each tick to /tmp/ticks.
    static let clockProgram = """
    import os, signal, time
    M = time.CLOCK_MONOTONIC
    start = time.clock_gettime(M)
    open("/tmp/start", "w").write("%.6f\\n" % start)
    ticks = open("/tmp/ticks", "a")
    def tick(sig, frame):
        ticks.write("%.6f\\n" % time.clock_gettime(M))
        ticks.flush()
    signal.signal(signal.SIGALRM, tick)
    signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)
    while True:
        open("/tmp/mono.new", "w").write("%.6f %.6f\\n" % (time.clock_gettime(M), time.clock_gettime(time.CLOCK_BOOTTIME)))
        os.rename("/tmp/mono.new", "/tmp/mono")
        time.sleep(0.05)
    """

    func numbers(_ path: String) -> [Double] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(whereSeparator: { $0 == "\n" || $0 == " " }).compactMap { Double($0) }
    }

    /// (the exec'd process's CLOCK_MONOTONIC, the container's last written
    /// one, the exec'd process's wall clock).
    func execClocks(_ name: String) throws -> (exec: Double, container: Double, wall: Double) {
        let out = try crsnapOK(["exec", name, "--", "python3", "-c",
                                "import time; print(time.clock_gettime(time.CLOCK_MONOTONIC), open('/tmp/mono').read().split()[0], time.time())"])
        let f = out.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        guard f.count == 3 else { throw XCTSkip("exec printed \(out)") }
        return (f[0], f[1], f[2])
    }

    func testClocksCarryOnFromTheSnapshotAndExecReadsTheContainersClock() throws {
        let name = uniqueName("clock")
        try crsnapOK(["run", name, "--", "python3", "-c", Self.clockProgram])
        started.append(name)
        let c = TestContainer(name: name, overlay: true)
        XCTAssertTrue(waitFor(20) { self.numbers("\(c.filesDir)/tmp/ticks").count >= 2 }, "the timer ticks")
        // Its own time namespace from the start, offsets 0.
        let initPid = try XCTUnwrap(jsonObjects(try crsnapOK(["top", name, "--json"])).first.map { int($0["host_pid"]) })
        XCTAssertNotEqual(try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(initPid)/ns/time"),
                          try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/time"), "a time namespace of its own")
        var e = try execClocks(name)
        XCTAssertLessThan(abs(e.exec - e.container), 0.3, "exec reads the container's clock before a rollback: \(e)")

        let id = try crsnapOK(["take", name]).trimmingCharacters(in: .whitespacesAndNewlines)
        let n = Int(id.split(separator: "@").last!)!
        let atTake = try XCTUnwrap(numbers("\(c.snapshotFiles(n))/tmp/mono").first)
        let ticksAtTake = numbers("\(c.snapshotFiles(n))/tmp/ticks").count
        let start = try XCTUnwrap(numbers("\(c.snapshotFiles(n))/tmp/start").first)
        let shown = jsonObject(try crsnapOK(["show", id, "--json"]))
        let clocks = try XCTUnwrap(shown["clocks"] as? [String: Any], "show reports the clocks")
        let shownMono = (clocks["monotonic"] as? NSNumber)?.doubleValue ?? 0
        XCTAssertTrue(shownMono >= atTake && shownMono < atTake + 0.3, "show's clock \(shownMono) is the take's (\(atTake))")
        let tookAt = Date()
        usleep(2_500_000)

        try crsnapOK(["rollback", id])
        let gap = Date().timeIntervalSince(tookAt)
        e = try execClocks(name)
        // The container's clock carried on from the snapshot, not from now.
        XCTAssertLessThan(e.container - atTake, gap - 1.5, "monotonic after the rollback: \(e.container), at the take \(atTake), \(gap) s later")
        XCTAssertGreaterThanOrEqual(e.container, atTake)
        XCTAssertLessThan(abs(e.exec - e.container), 0.3, "exec reads the container's clock after the rollback: \(e)")
        XCTAssertLessThan(abs(e.wall - Date().timeIntervalSince1970), 2, "the wall clock stays the host's")
        let boot = numbers("\(c.filesDir)/tmp/mono")
        XCTAssertEqual(boot.count, 2)
        if boot.count == 2 { XCTAssertLessThan(abs(boot[1] - boot[0]), 0.05, "CLOCK_BOOTTIME moved with CLOCK_MONOTONIC: \(boot)") }
        let offsets = try XCTUnwrap(jsonObject(try crsnapOK(["show", id, "--json"]))["container_clock_offsets"] as? [String: Any])
        XCTAssertLessThan((offsets["monotonic"] as? NSNumber)?.doubleValue ?? 0, -2, "the offset is about the time between take and rollback: \(offsets)")

        // The interval timer armed at the start ticks on its first schedule:
        // start + 0.5 s * k in the container's clock.
        XCTAssertTrue(waitFor(5) { self.numbers("\(c.filesDir)/tmp/ticks").count >= ticksAtTake + 3 })
        let ticks = numbers("\(c.filesDir)/tmp/ticks")
        for k in ticksAtTake..<min(ticks.count, ticksAtTake + 3) {
            let due = start + 0.5 * Double(k + 1)
            XCTAssertLessThan(abs(ticks[k] - due), 0.15, "tick \(k + 1) after the rollback at \(ticks[k]), due at \(due)")
        }
    }

    /// reboot(2) through libc from python: RB_AUTOBOOT, RB_POWER_OFF, RB_HALT_SYSTEM.
    static func rebootCall(_ how: String) -> String {
        let cmd = ["restart": "0x01234567", "poweroff": "0x4321fedc", "halt": "0xcdef0123"][how]!
        return "import ctypes, sys; r = ctypes.CDLL(None, use_errno=True).reboot(\(cmd)); sys.exit('reboot returned %d errno %d' % (r, ctypes.get_errno()))"
    }

    func psRow(_ name: String) throws -> [String: Any] {
        try XCTUnwrap(jsonObjects(try crsnapOK(["ps", "--json"])).first { $0["name"] as? String == name }, "\(name) listed")
    }

    func testRebootInsideRestartsTheCommandOnItsFiles() throws {
        let name = uniqueName("reboot")
        // First boot: a marker file, a child that must not survive, then a
        // reboot from a process that is not the init. Second boot: waits.
        let script = """
        if [ -e /var/tmp/booted ]; then echo "second boot"; exec sleep 100000; fi
        touch /var/tmp/booted; echo "first boot"; sleep 100000 & sleep 0.5
        python3 -c "\(Self.rebootCall("restart"))"
        echo "still here"; sleep 100000
        """
        try crsnapOK(["run", name, "--", "sh", "-c", script])
        started.append(name)
        let c = TestContainer(name: name, overlay: true)
        XCTAssertTrue(waitFor(20) { ((try? crsnap(["logs", name]))?.stdout ?? "").contains("second boot") },
                      "the command started again: \((try? crsnap(["logs", name]))?.stdout ?? "")")
        let logs = try crsnapOK(["logs", name])
        XCTAssertFalse(logs.contains("still here"), "reboot(2) ended the first boot: \(logs)")
        XCTAssertTrue(logs.contains("rebooted from inside") && logs.contains("restart 1"), logs)
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(c.filesDir)/var/tmp/booted"), "files kept across the reboot")
        let row = try psRow(name)
        XCTAssertEqual(row["state"] as? String, "running")
        XCTAssertEqual((row["last_exit"] as? [String: Any])?["reason"] as? String, "reboot")
        XCTAssertEqual(int(row["restarts"]), 1)
        // Only the second boot's processes: the first boot's child went with its pid namespace.
        let tasks = try topRows(name)
        XCTAssertEqual(tasks.map { $0["command"] as? String ?? "" }, ["sleep 100000"], "\(tasks)")
        XCTAssertEqual(int(tasks.first?["pid"]), 1, "a fresh pid namespace: the command is pid 1 again")
        XCTAssertTrue(try crsnapOK(["ps"]).contains("reboot (1)"))
        // And it is still a container crsnap can snapshot and roll back.
        let id = try crsnapOK(["take", name]).trimmingCharacters(in: .whitespacesAndNewlines)
        try crsnapOK(["rollback", id])
        XCTAssertEqual(try psRow(name)["state"] as? String, "running")
    }

    func testPoweroffAndHaltInsideStopTheContainer() throws {
        for how in ["poweroff", "halt"] {
            let name = uniqueName(how)
            try crsnapOK(["run", name, "--", "sh", "-c", "echo up; sleep 0.3; python3 -c \"\(Self.rebootCall(how))\"; echo still here; sleep 100000"])
            started.append(name)
            XCTAssertTrue(waitFor(20) { ((try? self.psRow(name))?["last_exit"] as? [String: Any])?["reason"] != nil }, "\(how) ends it")
            let row = try psRow(name)
            XCTAssertEqual(row["state"] as? String, "stopped", "\(how): \(row)")
            XCTAssertNil(row["reason"], "stopped by the monitor, not found gone: \(row)")
            XCTAssertEqual((row["last_exit"] as? [String: Any])?["reason"] as? String, "poweroff", "\(how): \(row)")
            XCTAssertNil(row["restarts"])
            let logs = try crsnapOK(["logs", name])
            XCTAssertTrue(logs.contains("powered off from inside"), logs)
            XCTAssertFalse(logs.contains("still here"), logs)
            XCTAssertTrue(try crsnapOK(["ps"]).contains("poweroff"))
            XCTAssertEqual(try crsnap(["top", name]).status, 4, "nothing runs")
        }
        // crsnap stop is said as such.
        let name = uniqueName("stopped")
        try crsnapOK(["run", name, "--", "sleep", "100000"])
        started.append(name)
        try crsnapOK(["stop", name])
        XCTAssertEqual((try psRow(name)["last_exit"] as? [String: Any])?["reason"] as? String, "stopped")
    }

    func testACommandThatRebootsAtOnceIsLeftStopped() throws {
        let name = uniqueName("rebootloop")
        try crsnapOK(["run", name, "--", "python3", "-c", Self.rebootCall("restart")])
        started.append(name)
        XCTAssertTrue(waitFor(30) { ((try? self.psRow(name))?["last_exit"] as? [String: Any])?["reason"] as? String == "reboot-loop" },
                      "a reboot loop ends: \((try? crsnap(["logs", name]))?.stdout ?? "")")
        let row = try psRow(name)
        XCTAssertEqual(row["state"] as? String, "stopped")
        XCTAssertEqual((row["last_exit"] as? [String: Any])?["reason"] as? String, "reboot-loop", "\(row)")
        XCTAssertEqual(int(row["restarts"]), 5)
        XCTAssertTrue(try crsnapOK(["logs", name]).contains("left stopped"))
    }

    /// A bridged container that reboots comes back at its address and on
    /// its published port (its veth is made again for the new namespace).
    func testABridgedContainerKeepsItsAddressAcrossAReboot() throws {
        let name = uniqueName("rebootbr")
        let port = freeLoopbackPort()
        let program = """
        import ctypes, os, socket, threading, time
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 8080))
        s.listen(8)
        boot = "second" if os.path.exists("/var/tmp/booted") else "first"
        def serve():
            while True:
                c, _ = s.accept()
                c.sendall(boot.encode())
                c.close()
        threading.Thread(target=serve, daemon=True).start()
        if boot == "first":
            open("/var/tmp/booted", "w").close()
            time.sleep(0.3)
            ctypes.CDLL(None).reboot(0x01234567)
        time.sleep(100000)
        """
        try crsnapOK(["run", name, "--network", "bridge", "--publish", "\(port):8080", "--", "python3", "-c", program])
        started.append(name)
        XCTAssertTrue(waitFor(20) { ((try? self.psRow(name))?["last_exit"] as? [String: Any])?["reason"] as? String == "reboot" })
        let address = try XCTUnwrap((try psRow(name)["address"] as? String)?.split(separator: "/").first.map(String.init))
        func ask(_ host: String, _ p: Int) -> String? {
            let r = try? runProgram("/usr/bin/python3", ["-c", "import socket, sys; print(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).recv(16).decode())", host, String(p)])
            return r?.status == 0 ? r?.stdout.trimmingCharacters(in: .whitespacesAndNewlines) : nil
        }
        XCTAssertTrue(waitFor(10) { ask(address, 8080) == "second" }, "the rebooted container answers at \(address)")
        XCTAssertEqual(ask("127.0.0.1", port), "second", "and on its published port")
    }
}
