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
}
