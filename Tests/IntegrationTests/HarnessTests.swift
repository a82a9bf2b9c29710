import FSSnapshot
import Foundation
import ProcessCR
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The test harness itself: Scripts/testenv runs the suite isolated
/// (Scripts/lib/isolate), and what these tests start there — a reboot(2), a
/// full /dev/shm, memory or disk running low, a run killed with SIGKILL —
/// ends that run alone and leaves nothing on the machine.
final class HarnessTests: XCTestCase {
    static let isolate = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Scripts/lib/isolate").path

    var scratch = ""

    override func setUpWithError() throws {
        try Env.require()
        try requireIsolated()
        scratch = "/var/tmp/crsnap-it-harness-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDown() {
        if !scratch.isEmpty { try? FileManager.default.removeItem(atPath: scratch) }
    }

    /// These tests call reboot(2) and fill memory on purpose: only inside an
    /// isolated run, never on the machine itself.
    func requireIsolated() throws {
        let env = ProcessInfo.processInfo.environment
        let here = pidNamespace()
        guard env["CRSNAP_TEST_ISOLATED"] == "1", let host = env["CRSNAP_TEST_HOST_PIDNS"], !host.isEmpty, here != host else {
            let why = "the suite is not running isolated (run it as Scripts/testenv swift test)"
            if Env.isCI { XCTFail(why) }
            throw XCTSkip(why)
        }
    }

    func pidNamespace() -> String { Proc.pidNamespace() ?? "?" }

    struct Run {
        let status: Int32
        /// stdout, then stderr
        let output: String
    }

    /// Runs `argv` in a nested isolated run; `started` sees its supervisor's
    /// pid once it runs.
    @discardableResult
    func isolated(_ argv: [String], env: [String: String] = [:], started: ((pid_t) throws -> Void)? = nil) throws -> Run {
        let r = try runProgram(Self.isolate, argv, env: env, started: started)
        return Run(status: r.status, output: r.stdout + r.stderr)
    }

    func testTheSuiteRunsIsolated() throws {
        let env = ProcessInfo.processInfo.environment
        XCTAssertEqual(env["CRSNAP_TEST_RUN_PIDNS"], pidNamespace(), "the suite runs in the pid namespace testenv made")
        XCTAssertNotEqual(env["CRSNAP_TEST_HOST_PIDNS"], pidNamespace())
        // the host's /dev/shm is as large as the RAM; the run's is capped
        var fs = statvfs()
        XCTAssertEqual(statvfs("/dev/shm", &fs), 0)
        let bytes = UInt64(fs.f_blocks) * UInt64(fs.f_frsize)
        XCTAssertLessThanOrEqual(bytes, 2 << 30, "/dev/shm is capped at 2 GiB (CRSNAP_TEST_SHM_SIZE)")
        // only loopback in the run's network namespace
        let links = try Program.run(["ip", "-o", "link", "show"])
        XCTAssertEqual(links.split(separator: "\n").count, 1, links)
        XCTAssertTrue(links.contains(": lo:") && links.contains("UP"), links)
    }

    func testRebootInsideANestedRunEndsThatRunAlone() throws {
        let outer = pidNamespace()
        // a process of this run that must outlive the nested one
        let bystander = Process()
        bystander.executableURL = URL(fileURLWithPath: "/bin/sleep")
        bystander.arguments = ["60"]
        try bystander.run()
        defer { if bystander.processIdentifier > 1 { kill(bystander.processIdentifier, SIGKILL); bystander.waitUntilExit() } }

        // The caller checks where it is before it reboots: never in the pid
        // namespace the outermost run was started from, nor in this one.
        let program = """
        import ctypes, os, sys
        here = os.readlink("/proc/self/ns/pid")
        if here != os.environ["CRSNAP_TEST_RUN_PIDNS"] or here in (os.environ["CRSNAP_TEST_HOST_PIDNS"], os.environ["OUTER_PIDNS"]):
            print("not in the nested run's own pid namespace: no reboot", flush=True)
            sys.exit(90)
        print("rebooting in", here, flush=True)
        ctypes.CDLL(None, use_errno=True).reboot(0x01234567)  # LINUX_REBOOT_CMD_RESTART
        print("still here after reboot(2), errno", ctypes.get_errno(), flush=True)
        sys.exit(91)
        """
        let r = try isolated(["python3", "-c", program], env: ["OUTER_PIDNS": outer])
        XCTAssertTrue(r.output.contains("rebooting in"), r.output)
        // reboot(2) in a child pid namespace kills its init, reported as SIGHUP
        XCTAssertEqual(r.status, 128 + SIGHUP, r.output)
        XCTAssertTrue(bystander.isRunning, "a process of the outer run survived the nested reboot")
        XCTAssertEqual(pidNamespace(), outer)
    }

    func testAWritePastTheShmCapFailsWithENOSPC() throws {
        let program = """
        import errno, os, sys
        try:
            with open("/dev/shm/fill", "wb") as f:
                for _ in range(16):
                    f.write(b"x" * (1 << 20))
                    f.flush()
        except OSError as e:
            print("errno", errno.errorcode[e.errno], flush=True)
            sys.exit(0)
        print("wrote 16 MiB into an 8 MiB /dev/shm", flush=True)
        sys.exit(1)
        """
        let r = try isolated(["python3", "-c", program], env: ["CRSNAP_TEST_SHM_SIZE": "8m"])
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("errno ENOSPC"), r.output)
    }

    func testAMemoryFloorStopsTheRun() throws {
        guard let avail = Self.memAvailableMiB() else { return XCTFail("no MemAvailable in /proc/meminfo") }
        // the floor just under what is available now; the run then takes 1 GiB
        let program = """
        import time
        b = bytearray(1 << 30)
        for i in range(0, len(b), 4096):
            b[i] = 1
        print("allocated 1 GiB and still running", flush=True)
        time.sleep(20)
        """
        let t0 = Date()
        let r = try isolated(["python3", "-c", program], env: ["CRSNAP_TEST_MEM_FLOOR_MB": "\(avail - 400)"])
        XCTAssertEqual(r.status, 75, r.output)
        XCTAssertTrue(r.output.contains("available memory down to"), r.output)
        XCTAssertTrue(r.output.contains("CRSNAP_TEST_MEM_FLOOR_MB"), r.output)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 15, "stopped, not left to run its 20 s")
    }

    func testADiskFloorStopsTheRun() throws {
        var fs = statvfs()
        XCTAssertEqual(statvfs(scratch, &fs), 0)
        let free = Int((UInt64(fs.f_bavail) * UInt64(fs.f_frsize)) >> 20)
        let program = """
        import os, sys, time
        with open(sys.argv[1], "wb") as f:
            for _ in range(512):
                f.write(b"d" * (1 << 20))
                f.flush(); os.fsync(f.fileno())
        print("wrote 512 MiB and still running", flush=True)
        time.sleep(20)
        """
        let r = try isolated(["python3", "-c", program, "\(scratch)/fill"],
                             env: ["CRSNAP_TEST_DISK_FLOOR_MB": "\(free - 200)", "CRSNAP_TEST_DISK_PATHS": scratch])
        XCTAssertEqual(r.status, 75, r.output)
        XCTAssertTrue(r.output.contains("free space on"), r.output)
        XCTAssertTrue(r.output.contains("CRSNAP_TEST_DISK_FLOOR_MB"), r.output)
        XCTAssertFalse(r.output.contains("still running"), r.output)
    }

    /// A nested run that mounts a tmpfs and a loop device (one attached by
    /// hand, without autoclear), adds a veth pair, makes a cgroup under
    /// crsnap/ with a process in it and leaves processes running.
    static let leaveThings = """
    set -eu
    scratch=$1 marker=$2 cg=$3
    mount -t tmpfs -o size=1m harness-tmpfs "$scratch/tmpfs"
    dev=$(losetup -f --show "$scratch/a.img")
    echo "$dev" >"$scratch/dev"
    mount "$dev" "$scratch/a"
    mount -o loop "$scratch/b.img" "$scratch/b"
    ip link add hv0 type veth peer name hv1
    mkdir -p "$cg"
    (exec -a "$marker" sleep 1000) &
    echo $! >"$cg/cgroup.procs"
    (exec -a "$marker" sleep 1000) &
    touch "$scratch/ready"
    if [ "${HANG:-}" = 1 ]; then sleep 1000; fi
    """

    func assertNothingLeft(killed: Bool) throws {
        for d in ["tmpfs", "a", "b"] { try FileManager.default.createDirectory(atPath: "\(scratch)/\(d)", withIntermediateDirectories: true) }
        for img in ["a.img", "b.img"] {
            XCTAssertTrue(FileManager.default.createFile(atPath: "\(scratch)/\(img)", contents: nil))
            XCTAssertEqual(truncate("\(scratch)/\(img)", 16 << 20), 0)
            try Program.run(["mkfs.ext4", "-q", "-F", "\(scratch)/\(img)"])
        }
        let marker = "crsnap-harness-\(getpid())-\(killed)"
        // where crsnap makes containers' cgroups (isolate cleans crsnap/ in every hierarchy)
        let cg = "\(try FreezerCgroup.hierarchy().root)/crsnap/harness-\(getpid())-\(killed)"
        let loopsBefore = Self.loopBackingFiles()
        let runDirs = { ((try? FileManager.default.contentsOfDirectory(atPath: "/run")) ?? []).filter { $0.hasPrefix("crsnap-isolate.") }.sorted() }
        let runDirsBefore = runDirs()

        let r = try isolated(["bash", "-c", Self.leaveThings, "leave-things", scratch, marker, cg],
                             env: ["HANG": killed ? "1" : "0"]) { pid in
            guard killed else { return }
            XCTAssertTrue(waitFor(20) { FileManager.default.fileExists(atPath: "\(self.scratch)/ready") }, "the nested run got ready")
            XCTAssertGreaterThan(pid, 1)
            if pid > 1 { kill(pid, SIGKILL) }
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(scratch)/ready"), r.output)
        if killed { XCTAssertEqual(r.status, 128 + SIGKILL, r.output) } else { XCTAssertEqual(r.status, 0, r.output) }
        let dev = (try? String(contentsOfFile: "\(scratch)/dev", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"

        // After a SIGKILL the guard cleans up on its own: give it a moment.
        let clean = waitFor(killed ? 10 : 0.1) {
            !FileManager.default.fileExists(atPath: cg) && Self.loopBackingFiles() == loopsBefore
                && Self.processes(named: marker).isEmpty && runDirs() == runDirsBefore
        }
        XCTAssertTrue(clean, "the run's leftovers are gone")
        XCTAssertFalse(FileManager.default.fileExists(atPath: cg), "the run's cgroup \(cg) is removed")
        XCTAssertEqual(Self.loopBackingFiles(), loopsBefore, "the run's loop devices (\(dev) among them) are detached")
        XCTAssertEqual(Self.processes(named: marker), [], "no process of the run is left")
        XCTAssertEqual(runDirs(), runDirsBefore, "the isolation's own directory in /run is removed")
        let mounts = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        XCTAssertFalse(mounts.contains(scratch), "no mount of the run is seen here: \(mounts)")
        let links = try Program.run(["ip", "-o", "link", "show"])
        XCTAssertFalse(links.contains("hv0") || links.contains("hv1"), links)
    }

    func testNothingIsLeftAfterARun() throws {
        try assertNothingLeft(killed: false)
    }

    func testNothingIsLeftAfterARunKilledWithSIGKILL() throws {
        try assertNothingLeft(killed: true)
    }

    /// Containers started inside a nested run that then ends: their monitors
    /// and inits are gone, and their recorded pids, as numbers, belong to
    /// other processes here. crsnap must see them as stopped, say why, never
    /// signal those processes, and stop, resume, rm and doctor --repair them.
    func testAContainerThatVanishedWithItsRunIsSeenAsGone() throws {
        let a = TestContainer(name: uniqueName("it-vanish-a"), overlay: true)
        let b = TestContainer(name: uniqueName("it-vanish-b"), overlay: true)
        defer { for c in [a, b] { _ = try? crsnap(["rm", "--force", c.name]) } }
        let script = """
        set -eu
        bin=$1
        for n in "$2" "$3"; do "$bin" run "$n" --env UNLINKED_MIB=1 -- python3 -c "$WORKLOAD"; done
        for _ in $(seq 300); do [ "$(wc -l <"$4" 2>/dev/null || echo 0)" -ge 5 ] && break; sleep 0.1; done
        "$bin" take "$2"
        """
        let r = try isolated(["bash", "-c", script, "vanish", Env.binary, a.name, b.name, a.workloadLog],
                             env: ["CRSNAP_STORE": Env.store!, "WORKLOAD": workloadSource])
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("\(a.name)@1"), r.output)

        // Their recorded pids, taken by processes of this run where free.
        var recorded: [pid_t] = []
        for c in [a, b] {
            let state = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(c.dir)/state.json"))) as! [String: Any]
            XCTAssertEqual(state["status"] as? String, "running", "the run ended without crsnap stopping \(c.name)")
            recorded += [state["monitorPid"], state["initPid"]].compactMap { ($0 as? NSNumber)?.int32Value }
        }
        XCTAssertEqual(recorded.count, 4)
        let occupants = try recorded.compactMap { try Self.occupy($0) }
        defer { for p in occupants where p.processIdentifier > 1 { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }
        XCTAssertFalse(occupants.isEmpty, "at least one recorded pid is in use here (\(recorded))")
        func occupantsAlive(_ what: String) {
            for p in occupants { XCTAssertTrue(p.isRunning, "\(what): pid \(p.processIdentifier), not the container's, was left alone") }
        }

        func row(_ c: TestContainer) throws -> [String: Any]? {
            let ps = try JSONSerialization.jsonObject(with: Data(try crsnapOK(["ps", "--json"]).utf8)) as! [[String: Any]]
            return ps.first { $0["name"] as? String == c.name }
        }
        for c in [a, b] {
            let rowC = try row(c)
            XCTAssertEqual(rowC?["state"] as? String, "stopped", "\(rowC ?? [:])")
            XCTAssertTrue((rowC?["reason"] as? String ?? "").contains("its processes are gone"), "\(rowC ?? [:])")
        }
        let table = try crsnapOK(["ps"])
        XCTAssertTrue(table.contains("* \(a.name): its processes are gone"), table)
        let show = try JSONSerialization.jsonObject(with: Data(try crsnapOK(["show", "\(a.name)@1", "--json"]).utf8)) as! [String: Any]
        XCTAssertEqual(show["container_state"] as? String, "stopped")
        XCTAssertTrue((show["container_reason"] as? String ?? "").contains("its processes are gone"), "\(show)")
        XCTAssertTrue(try crsnapOK(["show", "\(a.name)@1"]).contains("container \(a.name): stopped — its processes are gone"))

        let repair = try crsnap(["doctor", "--repair", a.name, b.name])
        XCTAssertFalse(repair.stderr.contains("Connection refused"), repair.stderr)
        occupantsAlive("doctor --repair")

        // b: removed as it is
        let rm = try crsnap(["rm", "--force", b.name])
        XCTAssertEqual(rm.status, 0, rm.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: b.dir))
        occupantsAlive("rm --force")

        // a: stopped (the record says so now), resumed from its snapshot, removed
        let stop = try crsnap(["stop", a.name])
        XCTAssertEqual(stop.status, 0, stop.stderr)
        XCTAssertNil(try row(a)?["reason"], "stopped by crsnap now")
        occupantsAlive("stop")
        let resume = try crsnap(["resume", a.name])
        XCTAssertEqual(resume.status, 0, resume.stderr)
        let running = try row(a)
        XCTAssertEqual(running?["state"] as? String, "running", "\(running ?? [:])")
        XCTAssertTrue(try crsnapOK(["show", "\(a.name)@1"]).contains("container \(a.name): running\n"))
        let pid = (running?["pid"] as? NSNumber)?.int32Value ?? 0
        XCTAssertFalse(occupants.map(\.processIdentifier).contains(pid))
        let last = counterLines(a.workloadLog).last ?? 0
        XCTAssertTrue(waitFor(20) { (counterLines(a.workloadLog).last ?? 0) > last + 3 }, "the resumed counter runs on")
        XCTAssertEqual(counterLines(a.workloadLog), Array(1...max(1, counterLines(a.workloadLog).count)), "memory agrees with the files")
        XCTAssertEqual(try crsnap(["rm", "--force", a.name]).status, 0)
        occupantsAlive("resume and rm")
    }

    /// Starts a process that gets pid `pid` in this pid namespace, if that
    /// pid is free (through ns_last_pid, as CRIU does); nil when another
    /// process has it already.
    static func occupy(_ pid: pid_t) throws -> Process? {
        guard pid > 1, kill(pid, 0) != 0 else { return nil }
        for _ in 0..<50 {
            try "\(pid - 1)".write(toFile: "/proc/sys/kernel/ns_last_pid", atomically: false, encoding: .utf8)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sleep")
            p.arguments = ["120"]
            try p.run()
            if p.processIdentifier == pid { return p }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            if kill(pid, 0) == 0 { return nil }
        }
        return nil
    }

    // MARK: - reading the machine

    static func memAvailableMiB() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            return line.split(separator: " ").dropFirst().first.flatMap { Int($0) }.map { $0 / 1024 }
        }
        return nil
    }

    /// Attached loop devices and their backing files.
    static func loopBackingFiles() -> [String: String] {
        var out: [String: String] = [:]
        for dev in (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? [] where dev.hasPrefix("loop") {
            if let f = try? String(contentsOfFile: "/sys/block/\(dev)/loop/backing_file", encoding: .utf8) {
                out[dev] = f.trimmingCharacters(in: .whitespacesAndNewlines)
            }
        }
        return out
    }

    /// Pids whose argv[0] is `name` (zombies included: a zombie is still left).
    static func processes(named name: String) -> [pid_t] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry in
            guard let pid = pid_t(entry), let cmd = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { return nil }
            let argv0 = cmd.split(separator: 0).first.map { String(decoding: $0, as: UTF8.self) }
            return argv0 == name ? pid : nil
        }
    }
}
