import FSSnapshot
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// `crsnap migrate` of a live redis with a client connected: to a store on
/// another btrfs filesystem, and failures on the way that must leave the
/// container running where it was and nothing at the destination.
final class MigrateTests: XCTestCase {
    var started: [(name: String, store: String)] = []
    var store2: String { Env.store2 }

    override func setUpWithError() throws {
        try Env.requireTwoStores()
    }

    override func tearDown() {
        for (name, store) in started { _ = try? crsnap(["rm", "--force", name], store: store) }
    }

    /// Debian's redis-server in the host's network on `port`, with data.
    func startRedis(_ prefix: String, bind: String = "127.0.0.1", port: Int) throws -> String {
        let name = uniqueName(prefix)
        let launcher = "import os, sys; os.execv(sys.argv[1], sys.argv[2:])"
        try crsnapOK(["run", name, "--", "/usr/bin/python3", "-c", launcher, RealServicesTests.redis, "redis-server",
                      "--port", "\(port)", "--bind", bind, "--protected-mode", "no", "--save", "", "--appendonly", "no",
                      "--daemonize", "no", "--enable-debug-command", "yes"])
        started.append((name, Env.store!))
        XCTAssertTrue(waitFor(30) { (try? self.redis("127.0.0.1", port, "PING")) == "PONG" }, "redis did not start")
        XCTAssertEqual(try redis("127.0.0.1", port, "SET", "moved", "yes"), "OK")
        XCTAssertEqual(try redis("127.0.0.1", port, "DEBUG", "POPULATE", "20000"), "OK")
        return name
    }

    func redis(_ host: String, _ port: Int, _ args: String...) throws -> String {
        let r = try runProgram(RealServicesTests.redisCLI, ["-h", host, "-p", "\(port)"] + args)
        return r.status == 0 ? r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) : "exit \(r.status): \(r.stderr)"
    }

    /// A client connection held open: PING answered.
    func connect(_ host: String, _ port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        XCTAssertEqual(onAddress(fd, host, port: port) { Glibc.connect($0, $1, $2) }, 0, "connect to \(host):\(port)")
        XCTAssertEqual(ask(fd, "PING"), "+PONG")
        return fd
    }

    /// One inline command, one line back; nil on EOF, reset or timeout.
    func ask(_ fd: Int32, _ command: String) -> String? {
        let line = Array((command + "\r\n").utf8)
        guard send(fd, line, line.count, Int32(MSG_NOSIGNAL)) == line.count else { return nil }
        var buf = [UInt8](repeating: 0, count: 256)
        let n = recv(fd, &buf, buf.count, 0)
        guard n > 0 else { return nil }
        return String(decoding: buf[..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// How a connection whose peer went away ends: "eof", "reset", or
    /// "timeout" when nothing came within its receive timeout (5 s).
    func ending(_ fd: Int32) -> String {
        var buf = [UInt8](repeating: 0, count: 256)
        let n = recv(fd, &buf, buf.count, 0)
        if n == 0 { return "eof" }
        if n > 0 { return "data: \(String(decoding: buf[..<n], as: UTF8.self))" }
        return errno == ECONNRESET ? "reset" : errno == EAGAIN ? "timeout" : "error \(errno)"
    }

    func names(_ store: String) throws -> [String] {
        jsonObjects(try crsnap(["ps", "--json"], store: store).stdout).compactMap { $0["name"] as? String }
    }

    func testMigrateToAnotherStoreMovesTheServerAndItsData() throws {
        let port = freeLoopbackPort()
        let name = try startRedis("mig", port: port)
        // 16 MiB in its files, which only the first send carries.
        try crsnapOK(["exec", name, "--", "/usr/bin/python3", "-c", "import os; open('/var/tmp/big', 'wb').write(os.urandom(16 << 20))"])
        let client = try connect("127.0.0.1", port)
        defer { close(client) }
        // A client waiting for an answer that only the server would send:
        // its request was read, so nothing of it is left to retransmit.
        let waiting = try connect("127.0.0.1", port)
        defer { close(waiting) }
        let blpop = Array("BLPOP never-pushed 0\r\n".utf8)
        XCTAssertEqual(send(waiting, blpop, blpop.count, Int32(MSG_NOSIGNAL)), blpop.count)
        XCTAssertTrue(waitFor(10) { (try? self.redis("127.0.0.1", port, "INFO", "clients"))?.contains("blocked_clients:1") == true },
                      "the BLPOP client is blocked")

        let r = try crsnap(["migrate", name, "--to", store2, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        started.append((name, store2))
        let out = jsonObject(r.stdout)
        let downtime = (out["downtime_ms"] as? NSNumber)?.doubleValue ?? 0
        XCTAssertGreaterThan(downtime, 0)
        XCTAssertNil(out["first_parent"] as? String, "the destination held nothing: the first send is whole")
        func bytes(_ k: String) -> UInt64 { (out[k] as? NSNumber)?.uint64Value ?? 0 }
        XCTAssertLessThan(bytes("second_fs_bytes") * 10, bytes("first_fs_bytes"), "the stop sends only what changed: \(out)")
        print("migrate: downtime \(downtime) ms, sent \(bytes("first_bytes")) then \(bytes("second_bytes")) bytes")

        // The waiting client was told: its connection ended as the server
        // stopped here (restored closed there, it would never hear of it).
        XCTAssertTrue(["eof", "reset"].contains(ending(waiting)), "the blocked client learns its connection ended")
        // The held connection ended; a new one finds the data there.
        XCTAssertNotEqual(ask(client, "PING"), "+PONG", "the old connection does not survive the move")
        XCTAssertEqual(try redis("127.0.0.1", port, "GET", "moved"), "yes")
        XCTAssertEqual(try redis("127.0.0.1", port, "DBSIZE"), "20001")
        XCTAssertFalse(try names(Env.store!).contains(name), "the container is gone from the source store")
        let row = jsonObjects(try crsnap(["ps", "--json"], store: store2).stdout).first { $0["name"] as? String == name }
        XCTAssertEqual(row?["state"] as? String, "running")
        let ids = jsonObjects(try crsnap(["list", name, "--json"], store: store2).stdout).compactMap { $0["id"] as? String }
        XCTAssertEqual(ids, [out["first"] as? String, out["second"] as? String].compactMap { $0 })

        // The stop snapshot holds no connections: asked to restore them, a
        // rollback to it brings them back closed, and the server answers.
        let back = try crsnap(["rollback", ids.last ?? "", "--tcp", "restore", "--json"], store: store2)
        XCTAssertEqual(back.status, 0, back.stderr)
        XCTAssertEqual(jsonObject(back.stdout)["tcp"] as? String, "close")
        XCTAssertEqual(try redis("127.0.0.1", port, "GET", "moved"), "yes")
    }

    func testAFailedMigrateLeavesTheContainerRunningHereAndNothingThere() throws {
        let port = freeLoopbackPort()
        let name = try startRedis("mig-fail", port: port)
        let before = jsonObjects(try crsnapOK(["list", name, "--json"])).count
        for (point, says) in [("migrate.sent", "runs on here"), ("migrate.stopped", "runs here again"), ("migrate.resume", "runs here again")] {
            let r = try crsnap(["migrate", name, "--to", store2], env: ["CRSNAP_FAULT": "fail:\(point)"])
            XCTAssertEqual(r.status, 1, "\(point): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(says), "\(point): says \"\(says)\": \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("removed from"), "\(point): the destination was cleaned: \(r.stderr)")
            XCTAssertEqual(try redis("127.0.0.1", port, "GET", "moved"), "yes", "\(point): redis answers here with its data")
            let row = jsonObjects(try crsnap(["ps", "--json"]).stdout).first { $0["name"] as? String == name }
            XCTAssertEqual(row?["state"] as? String, "running", point)
            XCTAssertFalse(try names(store2).contains(name), "\(point): nothing of it at the destination")
            XCTAssertEqual(jsonObjects(try crsnapOK(["list", name, "--json"])).count, before, "\(point): its snapshots here are as before")
        }
        // Bad input changes nothing.
        let cases: [([String], Int32, String)] = [
            (["migrate", name, "--to", "relative/path"], 64, "expected a store path"),
            (["migrate", name, "--to", Env.store!], 64, "own store"),
            (["migrate", name, "--to", "ssh://-oProxyCommand=x/"], 64, "not a host name"),
            (["migrate", name, "--to", "ssh://host:0"], 64, "port"),
            (["migrate", name, "--to", store2, "--ssh-config", "/nonexistent"], 64, "--ssh-config"),
            (["migrate", "no-such-container", "--to", store2], 3, "no container"),
        ]
        for (args, status, text) in cases {
            let r = try crsnap(args)
            XCTAssertEqual(r.status, status, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(text), "\(args) says \"\(text)\": \(r.stderr)")
        }
        XCTAssertEqual(try redis("127.0.0.1", port, "GET", "moved"), "yes")
    }

    /// Host B: a network namespace joined to this one (host A) by a veth
    /// pair (192.0.2.1 here, 192.0.2.2 there), Debian's sshd listening only
    /// there, a key for root. Returns the ssh client configuration file and
    /// what undoes it all, and the namespace's name.
    func hostB() throws -> (config: String, undo: () -> Void, ns: String) {
        guard let sshd = ProcessInfo.processInfo.environment["CRSNAP_TEST_SSHD"], FileManager.default.isExecutableFile(atPath: sshd) else {
            XCTFail("CRSNAP_TEST_SSHD (OpenSSH's server, unpacked by Scripts/testenv) is missing")
            throw XCTSkip("no sshd")
        }
        var undo: [() -> Void] = []
        func undoAll() { for u in undo.reversed() { u() } }
        do {
            func run(_ path: String, _ args: [String]) throws {
                let r = try runProgram(path, args)
                guard r.status == 0 else { throw XCTSkip("\(path) \(args.joined(separator: " ")) failed: \(r.stderr)") }
            }
            let ns = uniqueName("hostb")
            try run("/usr/sbin/ip", ["netns", "add", ns])
            undo.append { _ = try? runProgram("/usr/sbin/ip", ["netns", "del", ns]) }
            let near = "mA\(getpid() % 10000)", far = "mB\(getpid() % 10000)"
            try run("/usr/sbin/ip", ["link", "add", near, "type", "veth", "peer", "name", far, "netns", ns])
            undo.append { _ = try? runProgram("/usr/sbin/ip", ["link", "del", near]) }
            try run("/usr/sbin/ip", ["addr", "add", "192.0.2.1/24", "dev", near])
            try run("/usr/sbin/ip", ["link", "set", near, "up"])
            for args in [["addr", "add", "192.0.2.2/24", "dev", far], ["link", "set", far, "up"], ["link", "set", "lo", "up"]] {
                try run("/usr/sbin/ip", ["netns", "exec", ns, "/usr/sbin/ip"] + args)
            }
            // Keys, and what sshd needs that the host does not have: its
            // privilege-separation user (in a copy of /etc/passwd bound over
            // it in this run's own mount namespace) and /run/sshd.
            let dir = "/var/tmp/\(uniqueName("sshtest"))"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            undo.append { try? FileManager.default.removeItem(atPath: dir) }
            try run("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", "\(dir)/host"])
            try run("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", "\(dir)/id"])
            try FileManager.default.copyItem(atPath: "\(dir)/id.pub", toPath: "\(dir)/authorized_keys")
            let passwd = try String(contentsOfFile: "/etc/passwd", encoding: .utf8)
            if !passwd.contains("\nsshd:") {
                try (passwd + "sshd:x:64999:65534::/run/sshd:/usr/sbin/nologin\n").write(toFile: "\(dir)/passwd", atomically: true, encoding: .utf8)
                try run("/usr/bin/mount", ["--bind", "\(dir)/passwd", "/etc/passwd"])
                undo.append { _ = try? runProgram("/usr/bin/umount", ["/etc/passwd"]) }
            }
            if !FileManager.default.fileExists(atPath: "/run/sshd") {
                try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
                undo.append { rmdir("/run/sshd") }
            }
            try """
            ListenAddress 192.0.2.2
            HostKey \(dir)/host
            PidFile \(dir)/sshd.pid
            AuthorizedKeysFile \(dir)/authorized_keys
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            StrictModes no

            """.write(toFile: "\(dir)/sshd_config", atomically: true, encoding: .utf8)
            try """
            Host 192.0.2.2
              IdentityFile \(dir)/id
              StrictHostKeyChecking no
              UserKnownHostsFile /dev/null
              LogLevel ERROR

            """.write(toFile: "\(dir)/ssh_config", atomically: true, encoding: .utf8)
            // As a daemon (it forks and its first process exits): a child
            // that outlived a Foundation Process here kept later ones from
            // being reaped.
            // nsenter, not `ip netns exec`: that also mounts a sysfs of the
            // namespace over /sys, hiding the cgroup hierarchies crsnap needs.
            try run("/usr/bin/nsenter", ["--net=/run/netns/\(ns)", sshd, "-f", "\(dir)/sshd_config"])
            undo.append {
                if let text = try? String(contentsOfFile: "\(dir)/sshd.pid", encoding: .utf8),
                   let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1 {
                    kill(pid, SIGTERM)
                }
            }
            let up = waitFor(10) {
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                defer { close(fd) }
                return onAddress(fd, "192.0.2.2", port: 22) { Glibc.connect($0, $1, $2) } == 0
            }
            guard up else { throw XCTSkip("sshd did not listen on 192.0.2.2:22") }
            return ("\(dir)/ssh_config", undoAll, ns)
        } catch {
            undoAll()
            XCTFail("setting up host B: \(error)")
            throw error
        }
    }

    /// migrate over ssh to "another host" (a network namespace with its own
    /// sshd), the client then reaching the server at that host's address.
    func testMigrateOverSSHToAnotherHost() throws {
        let (config, undo, _) = try hostB()
        defer { undo() }
        let port = freeLoopbackPort()
        let name = try startRedis("mig-ssh", bind: "0.0.0.0", port: port)
        let client = try connect("127.0.0.1", port)
        defer { close(client) }
        // ssh works there, and crsnap answers.
        let probe = try runProgram("/usr/bin/ssh", ["-F", config, "192.0.2.2", "--", Env.binary, "ps", "--store", store2])
        XCTAssertEqual(probe.status, 0, "ssh to host B: \(probe.stderr)")

        let r = try crsnap(["migrate", name, "--to", "ssh://root@192.0.2.2\(store2)", "--remote-crsnap", Env.binary,
                            "--ssh-config", config, "--compress", "zstd", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        started.append((name, store2))
        let out = jsonObject(r.stdout)
        print("migrate over ssh: \(out)")
        XCTAssertEqual(out["ssh_shared_connection"] as? Bool, true, "the commands shared one ssh connection")
        XCTAssertEqual(out["destination"] as? String, "ssh://root@192.0.2.2\(store2)")

        XCTAssertNotEqual(ask(client, "PING"), "+PONG", "the old connection does not survive the move")
        XCTAssertFalse(try names(Env.store!).contains(name), "gone from host A")
        XCTAssertNotEqual(try redis("127.0.0.1", port, "PING"), "PONG", "nothing answers on host A any more")
        XCTAssertEqual(try redis("192.0.2.2", port, "GET", "moved"), "yes", "the client reaches it on host B, with its data")
        XCTAssertEqual(try redis("192.0.2.2", port, "DBSIZE"), "20001")
    }

    /// A bridged container moves with its address and published port: on
    /// host B it answers at the address it had on host A (from inside B's
    /// network), and at B's own address on the published port; A keeps
    /// nothing of it.
    /// A bridged container's address (from `ps --json` of `store`).
    func address(_ name: String, _ store: String) throws -> String? {
        let row = jsonObjects(try crsnap(["ps", "--json"], store: store).stdout).first { $0["name"] as? String == name }
        return (row?["address"] as? String)?.split(separator: "/").first.map(String.init)
    }

    /// Debian's redis on 0.0.0.0:6379 in a bridged container, published on
    /// `hostPort`, holding moved=yes; its name and address.
    func startBridgedRedis(_ prefix: String, hostPort: Int) throws -> (name: String, address: String) {
        let name = uniqueName(prefix)
        let launcher = "import os, sys; os.execv(sys.argv[1], sys.argv[2:])"
        try crsnapOK(["run", name, "--network", "bridge", "--publish", "\(hostPort):6379", "--", "/usr/bin/python3", "-c", launcher,
                      RealServicesTests.redis, "redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
                      "--save", "", "--appendonly", "no", "--daemonize", "no"])
        started.append((name, Env.store!))
        let here = try XCTUnwrap(try address(name, Env.store!))
        XCTAssertTrue(waitFor(30) { (try? self.redis(here, 6379, "PING")) == "PONG" }, "redis did not answer at \(here)")
        XCTAssertEqual(try redis(here, 6379, "SET", "moved", "yes"), "OK")
        return (name, here)
    }

    /// To a store on this host: the same bridge, so the container takes over
    /// the host side its address names (veth, published port), which the
    /// removal here must leave alone.
    func testABridgedContainerMovesToAnotherStoreOnThisHost() throws {
        let hostPort = freeLoopbackPort()
        let (name, here) = try startBridgedRedis("mig-brl", hostPort: hostPort)
        let r = try crsnap(["migrate", name, "--to", store2, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        started.append((name, store2))
        XCTAssertEqual(try address(name, store2), here, "the lease moved with it")
        XCTAssertEqual(try redis(here, 6379, "GET", "moved"), "yes", "at its address")
        XCTAssertEqual(try redis("127.0.0.1", hostPort, "GET", "moved"), "yes", "at the published port")
        XCTAssertFalse(try names(Env.store!).contains(name))
        // And its removal there takes the host side with it.
        try crsnapOK(["rm", "--force", name, "--store", store2])
        let gone = try runProgram("/usr/bin/timeout", ["3", RealServicesTests.redisCLI, "-p", "\(hostPort)", "PING"])
        XCTAssertNotEqual(gone.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "PONG", "the published port went with it")
    }

    func testABridgedContainerKeepsItsAddressOnAnotherHost() throws {
        let (config, undo, ns) = try hostB()
        defer { undo() }
        let hostPort = freeLoopbackPort()
        let (name, here) = try startBridgedRedis("mig-br", hostPort: hostPort)
        // On host B, commands run in its network namespace.
        func inB(_ path: String, _ args: [String]) throws -> Result {
            try runProgram("/usr/bin/nsenter", ["--net=/run/netns/\(ns)", path] + args)
        }
        defer { _ = try? inB(Env.binary, ["rm", "--force", name, "--store", store2]) }

        let r = try crsnap(["migrate", name, "--to", "ssh://root@192.0.2.2\(store2)", "--remote-crsnap", Env.binary,
                            "--ssh-config", config, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try address(name, store2), here, "the lease moved with it")
        let there = try inB(RealServicesTests.redisCLI, ["-h", here, "-p", "6379", "GET", "moved"])
        XCTAssertEqual(there.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "yes", "at its address on host B: \(there.stderr)")
        XCTAssertEqual(try redis("192.0.2.2", hostPort, "GET", "moved"), "yes", "the published port on host B, from host A")
        XCTAssertFalse(try names(Env.store!).contains(name), "gone from host A")
        let gone = try runProgram("/usr/bin/timeout", ["3", RealServicesTests.redisCLI, "-h", here, "-p", "6379", "PING"])
        XCTAssertNotEqual(gone.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "PONG", "nothing answers at the address on host A")
        let leases = (jsonObject(try crsnapOK(["network", "show", "--json"]))["leases"] as? [[String: Any]]) ?? []
        XCTAssertFalse(leases.contains { $0["container"] as? String == name }, "host A's lease is released")
    }
}
