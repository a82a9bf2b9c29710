import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// run --network: host (the host's network namespace) and none (one of the
/// container's own, loopback only, checkpointed and restored by CRIU).
final class NetworkTests: XCTestCase {
    var names: [String] = []

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        for n in names { _ = try? crsnap(["rm", "--force", n]) }
    }

    /// A server on 127.0.0.1:PORT and a client of it in the same process,
    /// on one connection for its whole life: each request's number and the
    /// answer go to /var/lib/pair/log ("N ok N"); EOF ends it with status 5.
    static let pair = """
        import os, socket, sys, threading, time
        port = int(sys.argv[1])
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(4)
        def serve():
            c, _ = srv.accept()
            f = c.makefile("rwb")
            while True:
                line = f.readline()
                if not line:
                    break
                f.write(b"ok " + line)
                f.flush()
        threading.Thread(target=serve, daemon=True).start()
        g = socket.create_connection(("127.0.0.1", port)).makefile("rwb")
        os.makedirs("/var/lib/pair", exist_ok=True)
        n = 0
        while True:
            n += 1
            g.write(b"%d\\n" % n)
            g.flush()
            answer = g.readline().decode().strip()
            with open("/var/lib/pair/log", "a") as f:
                f.write("%d %s\\n" % (n, answer or "EOF"))
            if not answer:
                sys.exit(5)
            time.sleep(0.05)
        """

    func start(_ prefix: String, _ network: String, port: Int) throws -> TestContainer {
        let name = uniqueName(prefix)
        names.append(name)
        try crsnapOK(["run", name, "--network", network, "--", "python3", "-c", Self.pair, "\(port)"])
        let c = TestContainer(name: name, overlay: true)
        XCTAssertTrue(waitFor(30) { self.log(c).count >= 3 }, "\(name) did not start: \((try? crsnap(["logs", name]).stdout) ?? "")")
        return c
    }

    func log(_ c: TestContainer) -> [String] {
        ((try? String(contentsOfFile: "\(c.filesDir)/var/lib/pair/log", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    /// Two containers with networks of their own listen on the same port,
    /// unreachable from the host; take and rollback keep the connection
    /// inside one of them established: its client carries on from the
    /// snapshot's request with answers, never an EOF; exec sees the
    /// container's network; ps and show say which network.
    func testAContainerWithItsOwnNetworkKeepsItsConnectionsAcrossRollback() throws {
        let port = freeLoopbackPort()
        let a = try start("it-net-a", "none", port: port)
        let b = try start("it-net-b", "none", port: port)
        XCTAssertFalse(a.cgroupProcs.isEmpty || b.cgroupProcs.isEmpty)
        // Nothing listens on the port here: each server is in its own network.
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(probe) }
        XCTAssertNotEqual(onLoopback(probe, port: port) { connect($0, $1, $2) }, 0, "the host reaches a --network none container")

        let id = try crsnapOK(["take", a.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        let atTake = log(a).count
        XCTAssertTrue(waitFor(10) { self.log(a).count > atTake + 10 })

        try crsnapOK(["rollback", id])
        let restoredFrom = log(a).count
        XCTAssertTrue(waitFor(10) { self.log(a).count > restoredFrom + 10 }, "the client stopped after the rollback")
        let lines = log(a)
        XCTAssertFalse(lines.contains { $0.hasSuffix("EOF") }, "the connection inside the container was lost: \(lines.suffix(5))")
        // Numbers restart from the snapshot's (the log file is the snapshot's
        // too), each answered on the same connection.
        let numbers = lines.compactMap { Int($0.split(separator: " ").first ?? "") }
        XCTAssertEqual(numbers, Array(1...numbers.count), "requests are not one unbroken run")
        XCTAssertTrue(lines.allSatisfy { l in l.split(separator: " ").count == 3 && l.split(separator: " ")[1] == "ok" })
        XCTAssertFalse(b.cgroupProcs.isEmpty, "the other container stopped")

        let dev = try crsnap(["exec", a.name, "--", "cat", "/proc/net/dev"])
        XCTAssertEqual(dev.status, 0, dev.stderr)
        let links = dev.stdout.split(separator: "\n").dropFirst(2).compactMap { $0.split(separator: ":").first?.trimmingCharacters(in: .whitespaces) }
        XCTAssertEqual(links, ["lo"], "exec does not see the container's network")

        let ps = jsonObjects(try crsnapOK(["ps", "--json"]))
        XCTAssertEqual(ps.first { $0["name"] as? String == a.name }?["network"] as? String, "none")
        let show = jsonObject(try crsnapOK(["show", id, "--json"]))
        XCTAssertEqual(show["network"] as? String, "none")
        let test = try crsnap(["verify", id, "--restore-test", "--for", "1"])
        XCTAssertEqual(test.status, 0, test.stderr)

        // rollback --tcp close: the same connection comes back shut down.
        let closed = jsonObject(try crsnapOK(["rollback", id, "--tcp", "close", "--json"]))
        XCTAssertEqual(closed["tcp"] as? String, "close")
        XCTAssertTrue(waitFor(10) { self.connectionEnded(a) }, "the connection came back open: \(log(a).suffix(3))")
    }

    /// The pair's client saw its connection end (EOF or a broken pipe).
    func connectionEnded(_ c: TestContainer) -> Bool {
        let said = (try? crsnap(["logs", c.name]).stdout) ?? ""
        return log(c).last?.hasSuffix("EOF") == true || said.contains("BrokenPipeError") || said.contains("ConnectionResetError")
    }

    /// The host's network (the default): the same pair's connection comes
    /// back closed after a rollback, as documented: the client's next
    /// request fails (EOF or a broken pipe) and the program ends.
    func testInTheHostsNetworkTheConnectionComesBackClosed() throws {
        let c = try start("it-net-host", "host", port: freeLoopbackPort())
        let id = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        let r = jsonObject(try crsnapOK(["rollback", id, "--json"]))
        XCTAssertEqual(r["tcp"] as? String, "close")
        XCTAssertTrue(waitFor(10) { self.connectionEnded(c) }, "the connection came back open: \(log(c).suffix(3))")
        let ps = jsonObjects(try crsnapOK(["ps", "--json"]))
        XCTAssertEqual(ps.first { $0["name"] as? String == c.name }?["network"] as? String, "host")
    }

    /// A server that listens but accepts only once /tmp/go exists, then
    /// says hello to each client.
    static let lateAcceptor = """
        import os, socket, sys, time
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", int(sys.argv[1])))
        srv.listen(8)
        open("/tmp/listening", "w").close()
        while not os.path.exists("/tmp/go"):
            time.sleep(0.05)
        while True:
            c, _ = srv.accept()
            c.sendall(b"hello\\n")
            c.close()
        """

    /// A connected TCP socket to 127.0.0.1:port with a 5 s receive timeout.
    func dial(_ port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard r == 0 else { throw XCTSkip("connect to \(port): errno \(errno)") }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    /// A connection the kernel completed but the server has not accepted
    /// yet (a client arriving during the freeze) does not fail a take or a
    /// rollback; it is not in the snapshot, so after the rollback its client
    /// is reset while a new client is served.
    func testAConnectionNotYetAcceptedDoesNotFailATake() throws {
        let name = uniqueName("it-net-queue")
        names.append(name)
        let port = freeLoopbackPort()
        try crsnapOK(["run", name, "--", "python3", "-c", Self.lateAcceptor, "\(port)"])
        let c = TestContainer(name: name, overlay: true)
        XCTAssertTrue(waitFor(20) { FileManager.default.fileExists(atPath: "\(c.filesDir)/tmp/listening") })
        let queued = try dial(port)
        defer { close(queued) }
        let take = try crsnap(["take", name])
        XCTAssertEqual(take.status, 0, "take with a connection in the accept queue: \(take.stderr)")
        let id = take.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try crsnapOK(["rollback", id])
        try crsnapOK(["exec", name, "--", "touch", "/tmp/go"])
        let fresh = try dial(port)
        defer { close(fresh) }
        var buf = [UInt8](repeating: 0, count: 64)
        let n = read(fresh, &buf, buf.count)
        XCTAssertEqual(n > 0 ? String(decoding: buf[..<n], as: UTF8.self) : "read \(n) errno \(errno)", "hello\n", "a new client is served")
        let old = read(queued, &buf, buf.count)
        XCTAssertLessThanOrEqual(old, 0, "the queued client is not served by the restored server (it was not in the snapshot)")
    }
}
