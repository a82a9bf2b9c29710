import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// `crsnap doctor NAME` and the preflight every take runs: what CRIU would
/// fail on after the freeze is named (process, fd, path) before it.
final class PreflightTests: XCTestCase {
    var started: [String] = []
    var helpers: [Process] = []
    var scratch: String?

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        for name in started { _ = try? crsnap(["rm", "--force", name]) }
        for p in helpers where p.isRunning { p.terminate(); p.waitUntilExit() }
        if let scratch { try? FileManager.default.removeItem(atPath: scratch) }
    }

    func start(_ prefix: String, _ args: [String]) throws -> String {
        let name = uniqueName(prefix)
        try crsnapOK(["run", name] + args)
        started.append(name)
        return name
    }

    func preflight(_ name: String) throws -> (status: Int32, report: [String: Any], text: String) {
        let r = try crsnap(["doctor", name, "--json"])
        let list = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]]
        let text = try crsnap(["doctor", name]).stdout
        return (r.status, list?.first ?? [:], text)
    }

    func findings(_ report: [String: Any]) -> [[String: Any]] { report["findings"] as? [[String: Any]] ?? [] }

    func snapshotCount(_ name: String) throws -> Int {
        let out = try crsnapOK(["list", name, "--json"])
        return (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [Any])?.count ?? -1
    }

    func testAHealthyContainerHasNothingInTheWay() throws {
        let name = try start("it-pf-ok", ["--", "python3", "-c", workloadSource])
        let c = TestContainer(name: name, overlay: true)
        XCTAssertTrue(waitFor(30) { counterLines(c.workloadLog).count >= 3 }, "workload did not start")
        let (status, report, text) = try preflight(name)
        XCTAssertEqual(status, 0, text)
        XCTAssertEqual(report["take_would_fail"] as? Bool, false)
        XCTAssertEqual(findings(report).filter { $0["severity"] as? String == "blocker" }.count, 0, "\(report)")
        XCTAssertGreaterThanOrEqual(report["tasks"] as? Int ?? 0, 2, "init and its child")
        XCTAssertTrue(text.contains("nothing stands in the way of a take"), text)
        let take = try JSONSerialization.jsonObject(with: Data(try crsnapOK(["take", name, "--json"]).utf8)) as? [String: Any]
        XCTAssertNotNil((take?["stats"] as? [String: Any])?["preflight_ms"], "take reports its preflight")

        XCTAssertEqual(try crsnap(["doctor", "no-such-\(name)"]).status, 3)
        XCTAssertEqual(try crsnap(["doctor", "bad/name"]).status, 64)
        try crsnapOK(["stop", name])
        let stopped = try crsnap(["doctor", name])
        XCTAssertEqual(stopped.status, 4, stopped.stderr)
        XCTAssertTrue(stopped.stderr.contains("not running"), stopped.stderr)
    }

    func testATaskOfAnotherUserIsABlockerWithoutCapSysResource() throws {
        let name = try start("it-pf-uid", ["--user", "65534:65533", "--", "sleep", "1000"])
        XCTAssertTrue(waitFor(10) { (try? self.preflight(name).report["tasks"] as? Int) == 1 })
        let pid = TestContainer(name: name, overlay: true).cgroupProcs.first ?? 0
        let procStatus = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = { (key: String) in procStatus.split(separator: "\n").first { $0.hasPrefix(key) }.map(String.init) ?? "" }
        XCTAssertEqual(line("Uid:"), "Uid:\t65534\t65534\t65534\t65534", "run --user sets the command's user")
        XCTAssertEqual(line("Gid:"), "Gid:\t65533\t65533\t65533\t65533")
        XCTAssertEqual(line("Groups:").trimmingCharacters(in: .whitespaces), "Groups:", "no supplementary groups")
        for bad in ["nobody", "1:x", "1:2:3", "4294967295", ""] {
            let r = try crsnap(["run", "x-\(name)", "--user", bad, "--", "true"])
            XCTAssertEqual(r.status, 64, "--user \(bad): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("invalid --user"), r.stderr)
        }
        let (status, report, text) = try preflight(name)
        let uid = findings(report).filter { $0["kind"] as? String == "uid" }
        if Env.hasSysResource {
            // With the capability CRIU dumps it: no blocker, and the take works.
            XCTAssertEqual(status, 0, text)
            XCTAssertTrue(uid.isEmpty, "\(report)")
            try crsnapOK(["take", name])
            return
        }
        XCTAssertEqual(status, 1, text)
        XCTAssertEqual(uid.count, 1, "\(report)")
        XCTAssertEqual(uid.first?["process"] as? String, "sleep")
        XCTAssertTrue((uid.first?["detail"] as? String ?? "").contains("CAP_SYS_RESOURCE"))
        XCTAssertTrue(text.contains("BLOCKER  pid ") && text.contains("a take would fail: 1 blocker"), text)
        // take refuses before the freeze: no CRIU log, no snapshot.
        let take = try crsnap(["take", name])
        XCTAssertEqual(take.status, 1, take.stderr)
        XCTAssertTrue(take.stderr.contains("would fail; nothing was frozen") && take.stderr.contains("uid 65534"), take.stderr)
        XCTAssertFalse(take.stderr.contains("dump.log"), "CRIU was not asked: \(take.stderr)")
        XCTAssertEqual(try snapshotCount(name), 0)
    }

    /// A host-side server on a unix socket in a volume: it passes every
    /// client an fd of a host file and keeps the connection; a TCP listener
    /// on loopback for outside connections.
    static let server = """
        import socket, os, array, sys, threading
        path, port = sys.argv[1], int(sys.argv[2])
        keep = []
        t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(('0.0.0.0', port)); t.listen(8)
        threading.Thread(target=lambda: [keep.append(t.accept()) for _ in iter(int, 1)], daemon=True).start()
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); u.bind(path); u.listen(8)
        print('ready', flush=True)
        while True:
            c, _ = u.accept()
            f = os.open('/etc/os-release', os.O_RDONLY)
            c.sendmsg([b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [f]))])
            keep.append(c)
        """

    /// Inside: takes the fd and keeps the connection (mode "bad"), opens a
    /// userfaultfd; always a TCP connection to the host's listener (at the
    /// address given, else 127.0.0.1) and one between two of its own sockets.
    static let client = """
        import socket, array, sys, time, ctypes, os
        mode, port = sys.argv[1], int(sys.argv[2])
        out = socket.create_connection((sys.argv[3] if len(sys.argv) > 3 else '127.0.0.1', port))
        l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1)
        a = socket.create_connection(l.getsockname()); b, _ = l.accept()
        if mode == 'bad':
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect('/ext/sock')
            msg, anc, flags, addr = s.recvmsg(1, socket.CMSG_LEN(4))
            fd = array.array('i', anc[0][2][:4])[0]
            uffd = ctypes.CDLL(None, use_errno=True).syscall(323, 0)
            assert uffd >= 0, ctypes.get_errno()
        os.makedirs('/var/lib/crsnap-pf', exist_ok=True)
        open('/var/lib/crsnap-pf/ready', 'w').close()
        time.sleep(100000)
        """

    func testBlockersAreNamedBeforeTheFreezeAndOutsidePeersWarned() throws {
        scratch = "/tmp/crsnap-pf-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let dir = scratch!
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let port = Int.random(in: 20000...40000)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        server.arguments = ["-c", Self.server, "\(dir)/sock", "\(port)"]
        let pipe = Pipe()
        server.standardOutput = pipe
        try server.run()
        helpers.append(server)
        XCTAssertEqual(String(decoding: pipe.fileHandleForReading.readData(ofLength: 6), as: UTF8.self), "ready\n")
        try Self.client.write(toFile: "\(dir)/client.py", atomically: true, encoding: .utf8)

        // A clean client: only the TCP connection to the host is worth a warning.
        let clean = try start("it-pf-tcp", ["--volume", "\(dir):/ext", "--", "python3", "/ext/client.py", "clean", "\(port)"])
        let cleanReady = "\(TestContainer(name: clean, overlay: true).filesDir)/var/lib/crsnap-pf/ready"
        XCTAssertTrue(waitFor(20) { FileManager.default.fileExists(atPath: cleanReady) }, "clean client did not start")
        var (status, report, text) = try preflight(clean)
        XCTAssertEqual(status, 0, text)
        let tcp = findings(report).filter { $0["kind"] as? String == "tcp-peer" }
        XCTAssertEqual(tcp.count, 1, "one outside connection; the inside pair is no finding: \(report)")
        XCTAssertEqual(tcp.first?["severity"] as? String, "warning")
        XCTAssertTrue((tcp.first?["path"] as? String ?? "").hasSuffix("-> 127.0.0.1:\(port)"), "\(tcp)")
        let take = try crsnap(["take", clean, "--json"])
        XCTAssertEqual(take.status, 0, take.stderr)
        let warnings = (try JSONSerialization.jsonObject(with: Data(take.stdout.utf8)) as? [String: Any])?["warnings"] as? [String]
        XCTAssertTrue(warnings?.contains { $0.contains("TCP connection to a peer outside") } ?? false, "\(String(describing: warnings))")

        // The bad client: three blockers, each named; take fails before the freeze.
        let bad = try start("it-pf-bad", ["--volume", "\(dir):/ext", "--", "python3", "/ext/client.py", "bad", "\(port)"])
        let badReady = "\(TestContainer(name: bad, overlay: true).filesDir)/var/lib/crsnap-pf/ready"
        XCTAssertTrue(waitFor(20) { FileManager.default.fileExists(atPath: badReady) }, "bad client did not start")
        (status, report, text) = try preflight(bad)
        XCTAssertEqual(status, 1, text)
        XCTAssertEqual(report["take_would_fail"] as? Bool, true)
        let blockers = findings(report).filter { $0["severity"] as? String == "blocker" }
        let byKind = Dictionary(blockers.map { ($0["kind"] as? String ?? "", $0) }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(Set(byKind.keys), ["mount", "unix-peer", "file-type"], "\(blockers)")
        XCTAssertEqual(byKind["mount"]?["path"] as? String, "/usr/lib/os-release")
        XCTAssertNotNil(byKind["mount"]?["fd"] as? Int)
        XCTAssertTrue((byKind["unix-peer"]?["detail"] as? String ?? "").contains("(\(dir)/sock)"), "\(blockers)")
        XCTAssertEqual(byKind["file-type"]?["path"] as? String, "anon_inode:[userfaultfd]")
        for b in blockers { XCTAssertEqual(b["process"] as? String, "python3") }
        let refused = try crsnap(["take", bad])
        XCTAssertEqual(refused.status, 1, refused.stderr)
        for needle in ["nothing was frozen", "/usr/lib/os-release", "userfaultfd", "\(dir)/sock", "crsnap doctor \(bad)"] {
            XCTAssertTrue(refused.stderr.contains(needle), "\(needle) in: \(refused.stderr)")
        }
        XCTAssertEqual(try snapshotCount(bad), 0)
        XCTAssertEqual(TestContainer(name: bad, overlay: true).freezerState, "THAWED")

        // The same with a network of its own: its sockets are looked at inside it.
        let gateway = String(((jsonObject(try crsnapOK(["network", "show", "--json"]))["gateway"] as? String) ?? "").split(separator: "/")[0])
        let bridged = try start("it-pf-br", ["--network", "bridge", "--volume", "\(dir):/ext", "--",
                                             "python3", "/ext/client.py", "bad", "\(port)", gateway])
        let bridgedReady = "\(TestContainer(name: bridged, overlay: true).filesDir)/var/lib/crsnap-pf/ready"
        XCTAssertTrue(waitFor(20) { FileManager.default.fileExists(atPath: bridgedReady) }, "bridged client did not start")
        (status, report, text) = try preflight(bridged)
        XCTAssertEqual(status, 1, text)
        XCTAssertEqual(Set(findings(report).filter { $0["severity"] as? String == "blocker" }.compactMap { $0["kind"] as? String }),
                       ["mount", "unix-peer", "file-type"], "\(report)")
        let outside = findings(report).filter { $0["kind"] as? String == "tcp-peer" }
        XCTAssertEqual(outside.count, 1, "one outside connection; the inside pair is no finding: \(report)")
        XCTAssertTrue((outside.first?["path"] as? String ?? "").hasSuffix("-> \(gateway):\(port)"), "\(outside)")
        XCTAssertTrue((report["network"] as? String ?? "").contains("inspected inside it"), "\(report)")
    }
}
