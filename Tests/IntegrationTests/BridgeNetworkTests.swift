import ContainerNetwork
import Foundation
import ProcessCR
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// run --network bridge: containers with addresses of their own on the
/// host's bridge, published ports (TCP and UDP), outbound NAT, and the
/// host's side removed with them; and a real server under --network none.
/// Everything here happens in the test run's own network namespace
/// (Scripts/testenv), which plays the host.
final class BridgeNetworkTests: XCTestCase {
    var names: [String] = []

    override func setUpWithError() throws {
        try Env.require()
        for tool in [RealServicesTests.redis, RealServicesTests.redisCLI] where !FileManager.default.isExecutableFile(atPath: tool) {
            XCTFail("\(tool) is missing (Scripts/testenv installs redis-tools)")
        }
    }

    override func tearDown() {
        for n in names { _ = try? crsnap(["rm", "--force", n]) }
    }

    /// Debian's redis-server on 0.0.0.0:6379 in a bridged container.
    func startRedis(_ prefix: String, _ extra: [String] = []) throws -> (name: String, address: String) {
        let name = uniqueName(prefix)
        names.append(name)
        let launcher = "import os, sys; os.execv(sys.argv[1], sys.argv[2:])"
        try crsnapOK(["run", name, "--network", "bridge"] + extra + ["--", "/usr/bin/python3", "-c", launcher,
                      RealServicesTests.redis, "redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
                      "--save", "", "--appendonly", "no", "--daemonize", "no"])
        let row = jsonObjects(try crsnapOK(["ps", "--json"])).first { $0["name"] as? String == name }
        XCTAssertEqual(row?["network"] as? String, "bridge")
        let cidr = row?["address"] as? String ?? ""
        let address = String(cidr.split(separator: "/").first ?? "")
        XCTAssertTrue(waitFor(30) { (try? self.redis(address, 6379, "PING")) == "PONG" },
                      "redis did not answer on \(cidr): \((try? crsnap(["logs", name]).stdout) ?? "")")
        return (name, address)
    }

    func redis(_ host: String, _ port: Int, _ args: String...) throws -> String {
        let r = try runProgram(RealServicesTests.redisCLI, ["-h", host, "-p", "\(port)"] + args)
        return r.status == 0 ? r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) : "exit \(r.status): \(r.stderr)"
    }

    /// This namespace's links.
    func links() -> [String] {
        (try? runProgram("/usr/sbin/ip", ["-o", "link", "show"]).stdout)?.split(separator: "\n").compactMap {
            $0.split(separator: ":").dropFirst().first.map { String($0.trimmingCharacters(in: .whitespaces).split(separator: "@")[0]) }
        } ?? []
    }

    /// Two redis servers on port 6379, each at its own address of the store's
    /// subnet; one published on a host port, reached from the host at
    /// 127.0.0.1 and the gateway, and from the other container. A host client
    /// holding a connection sees only a pause across take; across rollback it
    /// gets an EOF or a reset, its new connection sees the snapshot's data at
    /// the same address, and redis holds no restored copy of the old one
    /// (connections to outside peers come back aborted). The restore test passes. rm leaves no link,
    /// published port or lease behind.
    func testBridgedRedisServersShareAPortAndKeepTheirAddressAcrossRollback() throws {
        let hostPort = freeLoopbackPort()
        let a = try startRedis("it-br-a", ["--publish", "\(hostPort):6379"])
        let b = try startRedis("it-br-b")
        XCTAssertNotEqual(a.address, b.address)
        let net = jsonObject(try crsnapOK(["network", "show", "--json"]))
        let gateway = String((net["gateway"] as? String ?? "").split(separator: "/").first ?? "")
        let leases = (net["leases"] as? [[String: Any]]) ?? []
        XCTAssertEqual(leases.first { $0["container"] as? String == a.name }?["publish"] as? [String], ["\(hostPort):6379/tcp"])
        XCTAssertNotNil(leases.first { $0["container"] as? String == b.name })

        XCTAssertEqual(try redis(a.address, 6379, "SET", "who", "a"), "OK")
        XCTAssertEqual(try redis(b.address, 6379, "SET", "who", "b"), "OK")
        XCTAssertEqual(try redis(a.address, 6379, "GET", "who"), "a", "the two servers are one")
        XCTAssertEqual(try redis("127.0.0.1", hostPort, "GET", "who"), "a", "the published port from 127.0.0.1")
        XCTAssertEqual(try redis(gateway, hostPort, "GET", "who"), "a", "the published port at the gateway")
        let across = try crsnap(["exec", b.name, "--", RealServicesTests.redisCLI, "-h", a.address, "GET", "who"])
        XCTAssertEqual(across.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "a", "container to container: \(across.stderr)")
        let hairpin = try crsnap(["exec", b.name, "--", RealServicesTests.redisCLI, "-h", gateway, "-p", "\(hostPort)", "GET", "who"])
        XCTAssertEqual(hairpin.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "a", "container to a published port: \(hairpin.stderr)")

        // A client on the host holding one connection across the take.
        let held = try HeldConnection(host: a.address, port: 6379)
        XCTAssertEqual(held.request("PING"), "+PONG")
        let id = try crsnapOK(["take", a.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(held.request("PING"), "+PONG", "the held connection did not survive the take")
        XCTAssertEqual(held.request("SET after take"), "+OK")

        let rolled = jsonObject(try crsnapOK(["rollback", id, "--json"]))
        XCTAssertEqual(rolled["tcp"] as? String, "close-outside")
        let answer = held.request("GET after")
        XCTAssertTrue(answer == nil || answer == "", "the held connection still answers after the rollback: \(answer ?? "")")
        XCTAssertEqual(try redis(a.address, 6379, "GET", "after"), "", "not the snapshot's data")
        XCTAssertEqual(try redis(a.address, 6379, "GET", "who"), "a")
        XCTAssertEqual(try redis("127.0.0.1", hostPort, "GET", "who"), "a", "the published port after the rollback")
        func clients() -> [Substring] { ((try? redis(a.address, 6379, "CLIENT", "LIST")) ?? "").split(separator: "\n") }
        XCTAssertTrue(waitFor(5) { clients().count == 1 }, "redis still has the restored connection of the host's client: \(clients())")
        let said = try crsnapOK(["logs", a.name])
        XCTAssertTrue(said.contains("1 TCP connection to peers outside closed"), said)
        let row = jsonObjects(try crsnapOK(["ps", "--json"])).first { $0["name"] as? String == a.name }
        XCTAssertEqual((row?["address"] as? String)?.split(separator: "/").first.map(String.init), a.address)
        let inside = try crsnap(["exec", a.name, "--", "/usr/sbin/ip", "-o", "-4", "addr", "show", "eth0"])
        XCTAssertTrue(inside.stdout.contains(" \(a.address)/"), "eth0 lost its address: \(inside.stdout) \(inside.stderr)")
        let show = jsonObject(try crsnapOK(["show", id, "--json"]))
        XCTAssertEqual(show["network"] as? String, "bridge")
        XCTAssertEqual(show["publish"] as? [String], ["\(hostPort):6379/tcp"])
        let test = try crsnap(["verify", id, "--restore-test", "--for", "1"])
        XCTAssertEqual(test.status, 0, "restore test: \(test.stdout) \(test.stderr)")
        XCTAssertEqual(try redis(a.address, 6379, "GET", "who"), "a", "the restore test disturbed the container")

        // Removal: the veths, the forwarded port and the leases go.
        let veths = links().filter { $0.hasPrefix("cs") }
        XCTAssertEqual(veths.count, 2, "\(links())")
        for n in [a.name, b.name] { try crsnapOK(["rm", "--force", n]) }
        names = []
        XCTAssertTrue(waitFor(5) { Set(self.links()).isDisjoint(with: veths) }, "links left: \(links())")
        let after = (jsonObject(try crsnapOK(["network", "show", "--json"]))["leases"] as? [[String: Any]]) ?? []
        XCTAssertFalse(after.contains { [a.name, b.name].contains($0["container"] as? String ?? "") })
        let again = try startRedis("it-br-c", ["--publish", "\(hostPort):6379"])
        XCTAssertEqual(try redis("127.0.0.1", hostPort, "PING"), "PONG", "the host port was not free again")
        XCTAssertEqual(again.address, a.address, "the lowest free address was not given again")
    }

    /// Outbound: a bridged container reaches a server beyond the host (a
    /// network namespace the test makes, on a documentation network behind
    /// a veth), which sees the host's address, not the container's
    /// (masquerade), and the container's traffic leaves by its default
    /// route through the bridge.
    func testOutboundConnectionsAreMasqueraded() throws {
        let world = "crsnap-world-\(getpid())", near = "cw\(getpid() % 100_000)a", far = "cw\(getpid() % 100_000)b"
        func ip(_ args: String...) throws {
            let r = try runProgram("/usr/sbin/ip", args)
            XCTAssertEqual(r.status, 0, "ip \(args.joined(separator: " ")): \(r.stderr)")
        }
        try ip("netns", "add", world)
        defer {
            _ = try? runProgram("/usr/sbin/ip", ["link", "del", near])
            _ = try? runProgram("/usr/sbin/ip", ["netns", "del", world])
        }
        try ip("link", "add", near, "type", "veth", "peer", "name", far, "netns", world)
        try ip("addr", "add", "198.51.100.1/24", "dev", near)
        try ip("link", "set", near, "up")
        try ip("-n", world, "addr", "add", "198.51.100.2/24", "dev", far)
        try ip("-n", world, "link", "set", far, "up")
        try ip("-n", world, "link", "set", "lo", "up")
        // Says who connected: the address it sees.
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        server.arguments = ["netns", "exec", world, "/usr/bin/python3", "-c", """
            import socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("198.51.100.2", 7777)); s.listen(4); print("ready", flush=True)
            while True:
                c, a = s.accept(); c.sendall(a[0].encode()); c.close()
            """]
        let out = Pipe()
        server.standardOutput = out
        try server.run()
        defer { server.terminate(); server.waitUntilExit() }
        XCTAssertEqual(String(decoding: out.fileHandleForReading.readData(ofLength: 6), as: UTF8.self), "ready\n")

        let a = try startRedis("it-br-out")
        let r = try crsnap(["exec", a.name, "--", "/usr/bin/python3", "-c",
                            "import socket; print(socket.create_connection(('198.51.100.2', 7777), timeout=5).recv(64).decode())"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "198.51.100.1",
                       "the server beyond the host did not see the host's address")
        let route = try crsnap(["exec", a.name, "--", "/usr/sbin/ip", "-4", "route", "get", "198.51.100.2"])
        XCTAssertTrue(route.stdout.contains("dev eth0"), route.stdout + route.stderr)
    }

    /// A UDP port published from the host, before and after a rollback of
    /// the bridged server behind it (its socket comes back as it was).
    func testAPublishedUDPPortAnswersAcrossRollback() throws {
        let name = uniqueName("it-br-udp")
        names.append(name)
        let hostPort = freeLoopbackPort()
        try crsnapOK(["run", name, "--network", "bridge", "--publish", "\(hostPort):5353/udp", "--", "/usr/bin/python3", "-c", """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 5353)); n = 0
            while True:
                data, peer = s.recvfrom(512); n += 1; s.sendto(b"%s %d" % (data, n), peer)
            """])
        func ask(_ text: String) -> String? {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            defer { close(fd) }
            var tv = timeval(tv_sec: 1, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            guard onLoopback(fd, port: hostPort, { connect($0, $1, $2) }) == 0 else { return nil }
            _ = text.withCString { send(fd, $0, strlen($0), 0) }
            var buf = [UInt8](repeating: 0, count: 512)
            let n = recv(fd, &buf, buf.count, 0)
            return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : nil
        }
        XCTAssertTrue(waitFor(20) { ask("hello") != nil }, "no answer on \(hostPort)/udp: \((try? crsnap(["logs", name]).stdout) ?? "")")
        let before = ask("before") ?? ""
        let id = try crsnapOK(["take", name]).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertNotNil(ask("after take"))
        XCTAssertNotNil(ask("after take"))
        try crsnapOK(["rollback", id])
        let after = ask("again") ?? ""
        // The server's count goes on from the snapshot's, through the same port.
        XCTAssertEqual(after.split(separator: " ").last.flatMap { Int($0) },
                       before.split(separator: " ").last.flatMap { Int($0) }.map { $0 + 1 }, "\(before) / \(after)")
        // Stopped with a snapshot and resumed: its veth made again, the port forwarded.
        try crsnapOK(["take", "--stop", name])
        XCTAssertNil(ask("stopped"))
        try crsnapOK(["resume", name])
        XCTAssertNotNil(ask("resumed"), "no answer after resume: \((try? crsnap(["logs", name]).stdout) ?? "")")
    }

    /// A server with no network but loopback (--network none), reached by a
    /// client run inside it with exec: after a rollback it has the snapshot's
    /// data.
    func testRedisWithoutANetworkRollsBackAndAnswersInside() throws {
        let name = uniqueName("it-none-redis")
        names.append(name)
        let launcher = "import os, sys; os.execv(sys.argv[1], sys.argv[2:])"
        try crsnapOK(["run", name, "--network", "none", "--", "/usr/bin/python3", "-c", launcher, RealServicesTests.redis,
                      "redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--daemonize", "no"])
        func cli(_ args: String...) -> String {
            let r = try? crsnap(["exec", name, "--", RealServicesTests.redisCLI] + args)
            return r?.stdout.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        }
        XCTAssertTrue(waitFor(30) { cli("PING") == "PONG" }, "redis did not answer inside")
        XCTAssertNotEqual(try runProgram(RealServicesTests.redisCLI, ["-p", "6379", "PING"]).stdout, "PONG\n",
                          "the host reached a --network none server")
        XCTAssertEqual(cli("SET", "k", "snapshot"), "OK")
        let id = try crsnapOK(["take", name]).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(cli("SET", "k", "later"), "OK")
        try crsnapOK(["rollback", id])
        XCTAssertEqual(cli("GET", "k"), "snapshot")
    }

    /// What no container accounts for — a host-side veth of an address of the
    /// subnet nobody leases, a forwarded port to such an address — is named by
    /// doctor and removed by doctor --repair; a running container's veth and
    /// port stay.
    func testDoctorRepairRemovesTheHostSideNoContainerAccountsFor() throws {
        let port = freeLoopbackPort()
        let a = try startRedis("it-br-repair", ["--publish", "\(port):6379"])
        let net = jsonObject(try crsnapOK(["network", "show", "--json"]))
        let bridge = Bridge(name: net["bridge"] as? String ?? "", subnet: IPv4Network(net["subnet"] as? String ?? "")!)
        let stray = bridge.hostRange!.upperBound
        let strayLink = Bridge.hostInterface(for: stray)
        let add = try runProgram("/usr/sbin/ip", ["link", "add", strayLink, "type", "veth", "peer", "name", "crsnap-stray"])
        XCTAssertEqual(add.status, 0, add.stderr)
        let strayPort = PortMapping(hostPort: UInt16(freeLoopbackPort()), containerPort: 53, proto: .udp)
        try bridge.publish([strayPort], to: stray)

        let doctor = try crsnap(["doctor"])
        for needle in ["veth \(strayLink) of \(Bridge.dotted(stray)), which no container leases",
                       "host port \(strayPort.hostPort)/udp forwarded to \(Bridge.dotted(stray)):53, which no container publishes"] {
            XCTAssertTrue(doctor.stdout.contains(needle), "\(needle) in: \(doctor.stdout)")
        }
        let repair = try crsnap(["doctor", "--repair"])
        XCTAssertEqual(repair.status, 0, repair.stderr)
        XCTAssertEqual(repair.stderr.components(separatedBy: "repair: network: ").count - 1, 2, repair.stderr)
        XCTAssertFalse(links().contains(strayLink) || links().contains("crsnap-stray"), "\(links())")
        XCTAssertNil(try bridge.published()[.udp]?[strayPort.hostPort])
        XCTAssertEqual(try bridge.published()[.tcp]?[UInt16(port)]?.port, 6379, "the container's port went too")
        XCTAssertEqual(try redis("127.0.0.1", port, "PING"), "PONG")
        XCTAssertTrue(links().contains(Bridge.hostInterface(for: IPv4Network(a.address)!.address)), "the container's veth went too")
        XCTAssertFalse(try crsnap(["doctor"]).stdout.contains("which no container"))
    }

    /// A host port in use on the host or published by another container, and
    /// an address another container has, are refused; nothing is made.
    func testTakenPortsAndAddressesAreRefused() throws {
        let a = try startRedis("it-br-taken", ["--publish", "\(freeLoopbackPort()):6379"])
        let published = ((jsonObject(try crsnapOK(["network", "show", "--json"]))["leases"] as? [[String: Any]]) ?? [])
            .first { $0["container"] as? String == a.name }?["publish"] as? [String] ?? []
        let port = String(published.first?.split(separator: ":").first ?? "")
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        let busy = freeLoopbackPort()
        XCTAssertEqual(onLoopback(listener, port: busy) { bind($0, $1, $2) }, 0)
        XCTAssertEqual(listen(listener, 1), 0)
        let before = storeFingerprint(names)
        let linksBefore = links()
        for (args, mentions) in [(["--publish", "\(port):80"], "published by container \"\(a.name)\""),
                                 (["--publish", "\(busy):80"], "in use on this host"),
                                 (["--address", a.address], "container \"\(a.name)\" has it")] {
            let r = try crsnap(["run", "it-br-refused", "--network", "bridge"] + args + ["--", "sleep", "100"])
            XCTAssertEqual(r.status, 4, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(mentions), "\(args): \(r.stderr)")
            XCTAssertEqual(storeFingerprint(names), before, "\(args) changed the store")
            XCTAssertEqual(links(), linksBefore, "\(args) changed the links")
        }
    }
}

/// One TCP connection speaking redis's inline protocol, with a short timeout.
final class HeldConnection {
    let fd: Int32

    init(host: String, port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard onAddress(fd, host, port: port, { connect($0, $1, $2) }) == 0 else { throw NSError(domain: "connect \(host):\(port)", code: Int(errno)) }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    /// The first line of the answer; "" at EOF, nil on an error (a reset, a timeout).
    func request(_ line: String) -> String? {
        let out = Array((line + "\r\n").utf8)
        guard send(fd, out, out.count, Int32(MSG_NOSIGNAL)) == out.count else { return nil }
        var buf = [UInt8](repeating: 0, count: 512)
        let n = recv(fd, &buf, buf.count, 0)
        if n < 0 { return nil }
        return String(decoding: buf[0..<n], as: UTF8.self).split(separator: "\r\n").first.map(String.init) ?? ""
    }
}
