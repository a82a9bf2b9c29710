import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Real servers from Debian's packages in containers, each taken under load
/// and rolled back, each judged by its own tools: redis (DEBUG DIGEST, SAVE,
/// redis-check-rdb), nginx with a master and worker processes serving a
/// hammering client, PostgreSQL under pgbench (its TPC-B balances and
/// pg_amcheck; it cannot run as root, so it needs CAP_SYS_RESOURCE for CRIU
/// to dump it and skips loudly naming that capability where crsnap lacks it),
/// and a threaded program with pipes, unix sockets, epoll, timerfd, signalfd
/// and file locks (its own self-check). SQLite in WAL mode under random
/// rollbacks is FileLockTests'.
final class RealServicesTests: XCTestCase {
    var cname = ""
    var cleanups: [() -> Void] = []

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        for c in cleanups.reversed() { c() }
        cleanups = []
        if !cname.isEmpty { _ = try? crsnap(["rm", "--force", cname]) }
    }

    static func workload(_ name: String) -> String {
        let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        return here.appendingPathComponent("Workloads/\(name)").path
    }

    /// A free TCP port on 127.0.0.1 (bound and released; the tests run in
    /// their own network namespace).
    static func freePort() -> Int {
        for _ in 0..<50 {
            let p = Int.random(in: 20_000...40_000)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = in_port_t(UInt16(p).bigEndian)
            a.sin_addr.s_addr = inet_addr("127.0.0.1")
            let ok = withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if ok == 0 { return p }
        }
        return 39_999
    }

    /// Starts a host program in the background; it is killed at tearDown if
    /// still running.
    func background(_ path: String, _ args: [String]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        cleanups.append { if p.isRunning, p.processIdentifier > 1 { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }
        return p
    }

    func json(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
    }

    func sha256(_ path: String) throws -> String {
        try runProgram("/usr/bin/sha256sum", [path]).stdout.split(separator: " ").first.map(String.init) ?? ""
    }

    func takeID(_ args: [String]) throws -> String {
        try crsnapOK(["take"] + args).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    // MARK: redis

    static let redis = "/usr/bin/redis-check-rdb"  // Debian's redis-server, under its other name
    static let redisCLI = "/usr/bin/redis-cli"

    func cli(_ port: Int, _ args: String...) throws -> String {
        let r = try runProgram(Self.redisCLI, ["-p", "\(port)"] + args)
        XCTAssertEqual(r.status, 0, "redis-cli \(args.joined(separator: " ")): \(r.stderr)")
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// redis with its data in /var/lib/crsnap-redis of an overlay root, a
    /// client writing k:I and n atomically and saving every 50 writes. Taken
    /// under that load; rolled back under it (the client loses its connection
    /// and reconnects); rolled back twice more with the data destroyed in
    /// between: each time redis's memory digest, its n and its dump file are
    /// the same, the data set is whole (k:1..k:n), redis-check-rdb accepts the
    /// dump and n lies between what the client saw before and after the take.
    func testRedisUnderLoadRollsBackInMemoryAndOnDisk() throws {
        for tool in [Self.redis, Self.redisCLI] where !FileManager.default.isExecutableFile(atPath: tool) {
            XCTFail("\(tool) is missing (Scripts/testenv installs redis-tools)")
            return
        }
        cname = uniqueName("it-redis")
        let port = Self.freePort()
        let dir = "/var/lib/crsnap-redis"
        let launcher = "import os, sys; os.makedirs(sys.argv[1], exist_ok=True); os.execv(sys.argv[2], sys.argv[3:])"
        try crsnapOK(["run", cname, "--", "/usr/bin/python3", "-c", launcher, dir, Self.redis,
                      "redis-server", "--port", "\(port)", "--bind", "127.0.0.1", "--dir", dir, "--save", "",
                      "--appendonly", "no", "--enable-debug-command", "yes", "--daemonize", "no"])
        let c = TestContainer(name: cname, overlay: true)
        XCTAssertTrue(waitFor(30) { (try? runProgram(Self.redisCLI, ["-p", "\(port)", "PING"]).stdout) == "PONG\n" },
                      "redis did not answer: \((try? crsnap(["logs", cname]).stdout) ?? "")")

        let stop = NSTemporaryDirectory() + "\(cname).stop", report = NSTemporaryDirectory() + "\(cname).report"
        cleanups.append { unlink(stop); unlink(report) }
        let load = try background("/usr/bin/python3", [Self.workload("redis_client.py"), "load", "\(port)", stop, report])
        func n() throws -> Int { Int(try cli(port, "GET", "n")) ?? 0 }
        XCTAssertTrue(waitFor(30) { ((try? n()) ?? 0) > 300 && FileManager.default.fileExists(atPath: "\(c.filesDir)\(dir)/dump.rdb") },
                      "the client did not get going")
        let before = try n()
        let id = try takeID([cname])
        let after = try n()
        XCTAssertTrue(waitFor(10) { ((try? n()) ?? 0) > after + 200 }, "the client stopped after the take")

        // Rolled back under load: the client loses its connection and carries
        // on from the restored n.
        try crsnapOK(["rollback", id])
        let restored = try n()
        XCTAssertTrue(waitFor(20) { ((try? n()) ?? 0) > restored + 200 }, "the client did not carry on after the rollback")
        FileManager.default.createFile(atPath: stop, contents: nil)
        load.waitUntilExit()
        XCTAssertEqual(load.terminationStatus, 0, "the load client failed")
        let r = json((try? String(contentsOfFile: report, encoding: .utf8)) ?? "")
        XCTAssertGreaterThanOrEqual(r["reconnects"] as? Int ?? 0, 1, "the client never noticed the rollback: \(r)")

        /// What redis holds after a quiet rollback to `id`.
        func state(_ when: String) throws -> (digest: String, n: Int, dump: String) {
            try crsnapOK(["rollback", id])
            let digest = try cli(port, "DEBUG", "DIGEST")
            let check = json(try runProgram("/usr/bin/python3", [Self.workload("redis_client.py"), "check", "\(port)"]).stdout)
            let n = check["n"] as? Int ?? -1
            XCTAssertEqual(check["missing"] as? Int, 0, "\(when): keys missing: \(check)")
            XCTAssertEqual(check["wrong"] as? Int, 0, "\(when): wrong values: \(check)")
            XCTAssertEqual(check["dbsize"] as? Int, n + 1, "\(when): other keys: \(check)")
            XCTAssertTrue((before...after).contains(n), "\(when): n \(n) is not from the take's instant (\(before)...\(after))")
            // A SAVE the freeze interrupted completes before redis answers.
            let dump = "\(c.filesDir)\(dir)/dump.rdb"
            let rdb = try runProgram(Self.redis, [dump])
            XCTAssertEqual(rdb.status, 0, "\(when): redis-check-rdb: \(rdb.stdout) \(rdb.stderr)")
            XCTAssertTrue(rdb.stdout.contains("RDB looks OK"), "\(when): redis-check-rdb: \(rdb.stdout)")
            return (digest, n, try sha256(dump))
        }
        let first = try state("first quiet rollback")
        XCTAssertNotEqual(first.digest, String(repeating: "0", count: 40))
        // Destroy the data in memory and on disk...
        _ = try cli(port, "FLUSHALL")
        _ = try cli(port, "SAVE")
        XCTAssertNotEqual(try cli(port, "DEBUG", "DIGEST"), first.digest)
        XCTAssertNotEqual(try sha256("\(c.filesDir)\(dir)/dump.rdb"), first.dump)
        // ...and roll back again: the same memory and the same file.
        let second = try state("second quiet rollback")
        XCTAssertEqual(second.digest, first.digest, "the memory digest differs between two rollbacks to \(id)")
        XCTAssertEqual(second.n, first.n)
        XCTAssertEqual(second.dump, first.dump, "dump.rdb differs between two rollbacks to \(id)")
        // redis reloads its own dump of that memory to the same digest.
        _ = try cli(port, "DEBUG", "RELOAD")
        XCTAssertEqual(try cli(port, "DEBUG", "DIGEST"), first.digest, "DEBUG RELOAD changed the data")
        XCTAssertEqual(c.cgroupProcs.count, 1)
    }

    // MARK: a threaded event loop

    /// The program's own answer to `state`, read from its control socket by
    /// a second process inside the container.
    func evloopState(_ when: String) throws -> [String: Any] {
        let ask = "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/srv/crsnap-evloop/ctl.sock'); print(s.makefile().read())"
        let r = try crsnap(["exec", cname, "--", "/usr/bin/python3", "-c", ask])
        XCTAssertEqual(r.status, 0, "\(when): state: \(r.stderr)")
        let s = json(r.stdout)
        XCTAssertFalse(s.isEmpty, "\(when): no state: \(r.stdout)")
        XCTAssertTrue(s["error"] is NSNull, "\(when): the program saw \(s["error"] ?? "?")")
        XCTAssertLessThan(s["tick_age_ms"] as? Int ?? 99_999, 1_000, "\(when): the timerfd stopped: \(s)")
        for (thread, age) in s["beats"] as? [String: Int] ?? [:] {
            XCTAssertLessThan(age, 1_000, "\(when): thread \(thread) stopped: \(s)")
        }
        XCTAssertEqual((s["beats"] as? [String: Int])?.count, 3, "\(when): \(s)")
        return s
    }

    /// Three threads feeding an epoll loop through a pipe, a unix seqpacket
    /// socketpair and an eventfd, a timerfd, a signalfd, a listening unix
    /// socket and two file locks: taken while it runs and rolled back, the
    /// same process (its token) carries on from the snapshot's counters with
    /// every channel flowing in order, signals still arrive through the
    /// signalfd, and both locks are held again.
    func testAThreadedEventLoopWithItsDescriptorsRollsBack() throws {
        cname = uniqueName("it-evloop")
        try crsnapOK(["run", cname, "--", "/usr/bin/python3", "-u", "-c",
                      (try? String(contentsOfFile: Self.workload("evloop.py"), encoding: .utf8)) ?? ""])
        let c = TestContainer(name: cname, overlay: true)
        XCTAssertTrue(waitFor(30) { ((try? crsnap(["logs", self.cname]).stdout) ?? "").contains("ready") },
                      "the program did not start: \((try? crsnap(["logs", cname]).stderr) ?? "")")
        guard let pid = c.cgroupProcs.first(where: { p in
            ((try? String(contentsOfFile: "/proc/\(p)/cmdline", encoding: .utf8)) ?? "").contains("python3")
        }), pid > 1 else { return XCTFail("no python3 in \(c.cgroupProcs)") }
        XCTAssertEqual(kill(pid, SIGUSR1), 0)
        usleep(200_000)
        let locks = lockTable(c)
        XCTAssertEqual(locks.filter { !$0.waiting }.count, 2, "\(locks)")
        let id = try takeID([cname])
        let taken = try evloopState("after the take")
        XCTAssertEqual(taken["signals"] as? Int, 1)
        XCTAssertEqual(kill(pid, SIGUSR1), 0)
        usleep(300_000)
        let moved = try evloopState("before the rollback")
        XCTAssertEqual(moved["signals"] as? Int, 2)

        try crsnapOK(["rollback", id])
        let back = try evloopState("right after the rollback")
        XCTAssertEqual(back["token"] as? String, taken["token"] as? String, "another process answers")
        XCTAssertEqual(back["signals"] as? Int, 1, "the signal count is not the snapshot's")
        for k in ["piped", "echoed", "ticks", "events"] {
            XCTAssertLessThan(back[k] as? Int ?? .max, moved[k] as? Int ?? 0, "\(k) did not go back: \(back) vs \(moved)")
        }
        XCTAssertEqual(lockTable(c), locks, "the locks are not the snapshot's")
        guard let restored = c.cgroupProcs.first(where: { p in
            ((try? String(contentsOfFile: "/proc/\(p)/cmdline", encoding: .utf8)) ?? "").contains("python3")
        }), restored > 1 else { return XCTFail("no python3 after the rollback") }
        XCTAssertEqual(kill(restored, SIGUSR2), 0)
        usleep(300_000)
        let later = try evloopState("a while after the rollback")
        XCTAssertEqual(later["signals"] as? Int, 2, "a signal after the rollback did not arrive through the signalfd")
        for k in ["piped", "echoed", "ticks", "events"] {
            XCTAssertGreaterThan(later[k] as? Int ?? 0, back[k] as? Int ?? .max, "\(k) does not flow after the rollback")
        }
    }

    // MARK: nginx

    /// Writes nginx's configuration and page into the container, then execs
    /// nginx in the foreground: a master and three workers (as root: a worker
    /// of another uid needs CAP_SYS_RESOURCE to be dumped), stub_status at
    /// /status, every path of its own under /srv/crsnap-nginx.
    static let nginxLauncher = """
        import os, sys
        port, nginx = sys.argv[1], sys.argv[2]
        d = "/srv/crsnap-nginx"
        os.makedirs(d + "/www", exist_ok=True)
        with open(d + "/www/index.html", "w") as f:
            f.write("v1\\n")
        temps = "".join("  %s_temp_path %s/%s;\\n" % (t, d, t) for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = ("daemon off;\\nuser root;\\nworker_processes 3;\\npid %s/nginx.pid;\\nerror_log stderr notice;\\n"
                "events { worker_connections 256; }\\n"
                "http {\\n  access_log %s/access.log;\\n  default_type text/plain;\\n%s"
                "  server {\\n    listen 127.0.0.1:%s;\\n    root %s/www;\\n    location = /status { stub_status; }\\n  }\\n}\\n"
                % (d, d, temps, port, d))
        with open(d + "/nginx.conf", "w") as f:
            f.write(conf)
        os.execv(nginx, ["nginx", "-e", "stderr", "-p", d, "-c", d + "/nginx.conf"])
        """

    func get(_ port: Int, _ path: String) throws -> (status: Int, body: String) {
        let r = try runProgram("/usr/bin/python3", [Self.workload("http_client.py"), "get", "\(port)", path])
        let lines = r.stdout.split(separator: "\n", maxSplits: 1).map(String.init)
        return (Int(lines.first ?? "") ?? -1, lines.count > 1 ? lines[1].trimmingCharacters(in: .whitespacesAndNewlines) : "")
    }

    /// stub_status's count of requests handled (shared memory of all workers).
    func nginxRequests(_ port: Int) throws -> Int? {
        // "Active connections: 1 \nserver accepts handled requests\n 7 7 9 \n..."
        let body = try get(port, "/status").body
        let lines = body.split(separator: "\n")
        guard lines.count > 2 else { return nil }
        return lines[2].split(separator: " ").last.flatMap { Int($0) }
    }

    /// The client's load, started and stopped; its report.
    func httpLoad(_ port: Int, during work: () throws -> Void) throws -> [String: Any] {
        let stop = NSTemporaryDirectory() + "\(cname).http.stop", report = NSTemporaryDirectory() + "\(cname).http.report"
        unlink(stop)
        defer { unlink(stop); unlink(report) }
        let load = try background("/usr/bin/python3", [Self.workload("http_client.py"), "load", "\(port)", stop, report])
        usleep(300_000)
        try work()
        usleep(300_000)
        FileManager.default.createFile(atPath: stop, contents: nil)
        load.waitUntilExit()
        XCTAssertEqual(load.terminationStatus, 0, "the HTTP client failed")
        return json((try? String(contentsOfFile: report, encoding: .utf8)) ?? "")
    }

    /// nginx, a master and three workers, serving four keep-alive clients:
    /// taken under that load (no client sees an error or a status but 200),
    /// its page changed, rolled back under load (the clients lose their
    /// connections, reconnect and get the snapshot's page); the same master
    /// and workers come back, stub_status's request count goes back, and the
    /// master still answers `nginx -s reload` by starting new workers.
    func testNginxMasterAndWorkersUnderLoadRollBack() throws {
        guard let nginx = ProcessInfo.processInfo.environment["CRSNAP_TEST_NGINX"],
              FileManager.default.isExecutableFile(atPath: nginx) else {
            return XCTFail("nginx is missing (Scripts/testenv unpacks it and sets CRSNAP_TEST_NGINX)")
        }
        cname = uniqueName("it-nginx")
        let port = Self.freePort()
        try crsnapOK(["run", cname, "--", "/usr/bin/python3", "-c", Self.nginxLauncher, "\(port)", nginx])
        let c = TestContainer(name: cname, overlay: true)
        XCTAssertTrue(waitFor(30) { (try? self.get(port, "/").body) == "v1" && c.cgroupProcs.count == 4 },
                      "nginx did not come up with three workers: \((try? crsnap(["logs", cname]).stderr) ?? "")")
        let processes = c.namespacePids

        var id = ""
        let acrossTake = try httpLoad(port) { id = try self.takeID([self.cname]) }
        XCTAssertEqual(acrossTake["errors"] as? Int, 0, "a client saw an error across the take: \(acrossTake)")
        XCTAssertEqual((acrossTake["bad_status"] as? [Int])?.count, 0, "\(acrossTake)")
        XCTAssertGreaterThan(acrossTake["requests"] as? Int ?? 0, 20, "\(acrossTake)")
        XCTAssertEqual(acrossTake["bodies"] as? [String], ["v1"])
        let servedAtTake = try nginxRequests(port) ?? .max  // the snapshot's count and a few more

        let write = "open('/srv/crsnap-nginx/www/index.html', 'w').write('v2\\n')"
        XCTAssertEqual(try crsnap(["exec", cname, "--", "/usr/bin/python3", "-c", write]).status, 0)
        XCTAssertEqual(try get(port, "/").body, "v2")
        let servedBefore = try nginxRequests(port) ?? 0

        let acrossRollback = try httpLoad(port) { _ = try crsnapOK(["rollback", id]) }
        XCTAssertGreaterThanOrEqual(acrossRollback["errors"] as? Int ?? 0, 1, "no client noticed the rollback: \(acrossRollback)")
        XCTAssertEqual((acrossRollback["bad_status"] as? [Int])?.count, 0, "\(acrossRollback)")
        XCTAssertEqual(acrossRollback["last"] as? String, "v1", "after the rollback the clients get: \(acrossRollback)")
        XCTAssertEqual(c.namespacePids, processes, "not the same master and workers")

        // The master, restored, still handles a reload: three new workers.
        let reload = try crsnap(["exec", cname, "--", nginx, "-e", "stderr", "-p", "/srv/crsnap-nginx",
                                 "-c", "/srv/crsnap-nginx/nginx.conf", "-s", "reload"])
        XCTAssertEqual(reload.status, 0, "nginx -s reload: \(reload.stderr)")
        XCTAssertTrue(waitFor(20) { let now = c.namespacePids
            return now.count == 4 && Set(now).intersection(processes).count == 1 },
                      "the reload did not replace the workers: \(c.namespacePids) vs \(processes)")
        XCTAssertEqual(try get(port, "/").body, "v1")

        // A quiet rollback: the count in the workers' shared memory is the
        // snapshot's (its own request added), and the first workers are back.
        try crsnapOK(["rollback", id])
        let served = try nginxRequests(port) ?? .max
        XCTAssertLessThanOrEqual(served, servedAtTake + 1, "stub_status's count is not the snapshot's")
        XCTAssertLessThan(served, servedBefore)
        XCTAssertEqual(c.namespacePids, processes)
    }
}
