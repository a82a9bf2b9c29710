@testable import ContainerNetwork
@testable import CrsnapCore
import ProcessCR
import XCTest

final class NetworkUnitTests: XCTestCase {
    func testPortMappingsParseOnlyWhatTheyShould() {
        XCTAssertEqual(PortMapping(parsing: "8080:80"), PortMapping(hostPort: 8080, containerPort: 80, proto: .tcp))
        XCTAssertEqual(PortMapping(parsing: "53:5353/udp"), PortMapping(hostPort: 53, containerPort: 5353, proto: .udp))
        XCTAssertEqual(PortMapping(parsing: "65535:1/tcp")?.description, "65535:1/tcp")
        for bad in ["", "80", ":80", "80:", "0:80", "80:0", "65536:80", "80:80/sctp", "80:80/", "+80:80", "8 0:80",
                    "80:80:80", "80:80/tcp/udp", "٨٠:80", "-1:80", "000080:80"] {
            XCTAssertNil(PortMapping(parsing: bad), bad)
        }
    }

    func testPortMappingsAreStringsInJSON() throws {
        let ports = [PortMapping(hostPort: 8080, containerPort: 80, proto: .tcp)]
        let data = try JSONEncoder().encode(ports)
        XCTAssertEqual(String(decoding: data, as: UTF8.self), #"["8080:80\/tcp"]"#)
        XCTAssertEqual(try JSONDecoder().decode([PortMapping].self, from: data), ports)
        XCTAssertThrowsError(try JSONDecoder().decode([PortMapping].self, from: Data(#"["8080"]"#.utf8)))
    }

    func testTheBridgesAddressesAndLinkNames() {
        let b = Bridge(subnet: IPv4Network("10.87.0.9/24")!)
        XCTAssertEqual(b.subnet.description, "10.87.0.0/24", "host bits are dropped")
        XCTAssertEqual(b.gateway.description, "10.87.0.1/24")
        XCTAssertEqual(b.hostRange.map { Bridge.dotted($0.lowerBound) }, "10.87.0.2")
        XCTAssertEqual(b.hostRange.map { Bridge.dotted($0.upperBound) }, "10.87.0.254")
        XCTAssertNil(Bridge(subnet: IPv4Network("10.87.0.0/31")!).hostRange)
        XCTAssertEqual(Bridge(subnet: IPv4Network("10.87.0.0/30")!).hostRange.map { $0.count }, 1)
        let name = Bridge.hostInterface(for: IPv4Network("10.87.0.2")!.address)
        XCTAssertEqual(name, "cs0a570002")
        XCTAssertLessThanOrEqual(name.utf8.count, 15, "IFNAMSIZ")
        XCTAssertEqual(Bridge.address(ofHostInterface: name), IPv4Network("10.87.0.2")!.address)
        for other in ["crsnap0", "cs0A570002", "cs0a57000", "eth0", "cs0a57000g"] {
            XCTAssertNil(Bridge.address(ofHostInterface: other), other)
        }
        XCTAssertEqual(b.criuExternal(address: IPv4Network("10.87.0.2")!.address), "veth[eth0]:cs0a570002@crsnap0")
        XCTAssertEqual(b.criuExternal(address: 0, hostSide: "crsnap-test", bridged: false), "veth[eth0]:crsnap-test")
    }

    func testASubnetTheHostUsesIsRefusedButTheBridgesOwnIsNot() {
        let b = Bridge(subnet: IPv4Network("10.87.0.0/24")!)
        let own: [(network: IPv4Network, what: String)] = [
            (IPv4Network("10.87.0.0/24")!, "address 10.87.0.1/24 on crsnap0"), (IPv4Network("10.87.0.0/24")!, "route via crsnap0"),
            (IPv4Network("127.0.0.0/8")!, "address 127.0.0.1/8 on lo"),
        ]
        XCTAssertNil(b.subnetRefusal(host: own))
        let taken = own + [(IPv4Network("10.87.0.0/16")!, "route via eth0")]
        XCTAssertEqual(b.subnetRefusal(host: taken), "10.87.0.0/24 overlaps 10.87.0.0/16 (route via eth0) of the host")
        XCTAssertNotNil(Bridge(subnet: IPv4Network("10.87.0.0/31")!).subnetRefusal(host: []))
    }

    func testTheRulesTouchOnlyCrsnapsTable() {
        let b = Bridge()
        XCTAssertNil(Safety.nftablesRefusal(b.baseRules), b.baseRules)
        XCTAssertTrue(b.baseRules.contains("ip saddr 10.87.0.0/24 ip daddr != 10.87.0.0/24 masquerade"))
        XCTAssertTrue(b.baseRules.contains("oifname \"crsnap0\" masquerade"))
        XCTAssertThrowsError(try NFTables.run("flush ruleset")) { XCTAssertTrue("\($0)".contains("whole ruleset"), "\($0)") }
        XCTAssertThrowsError(try NFTables.run("add table ip filter")) { XCTAssertTrue("\($0)".contains("not crsnap's"), "\($0)") }
    }

    func testPublishedPortsAreReadFromNftablesJSON() {
        let json = #"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"map": {"family": "ip", "name": "tcp_ports", "table": "crsnap", "type": "inet_service", "handle": 5, "map": ["ipv4_addr", "inet_service"], "elem": [[8080, {"concat": ["10.87.0.2", 80]}], [9090, {"concat": ["10.87.0.3", 6379]}]]}}]}"#
        let m = Bridge.mapElements(json: json)
        XCTAssertEqual(m.count, 2)
        XCTAssertEqual(m[8080].map { Bridge.dotted($0.address) }, "10.87.0.2")
        XCTAssertEqual(m[9090]?.port, 6379)
        XCTAssertTrue(Bridge.mapElements(json: #"{"nftables": [{"map": {"name": "udp_ports"}}]}"#).isEmpty)
        XCTAssertTrue(Bridge.mapElements(json: "not json").isEmpty)
    }

    func testPublishFlagsAreParsedWithTheirFaultsNamed() {
        XCTAssertEqual(try Networks.parsePublish(["80:8080", "80:8080/udp"]).count, 2, "one host port, two protocols")
        XCTAssertThrowsError(try Networks.parsePublish(["80:8080", "80:9090"])) { XCTAssertTrue("\($0)".contains("twice")) }
        XCTAssertThrowsError(try Networks.parsePublish(["x"])) { XCTAssertTrue("\($0)".contains("\"x\"")) }
    }
}
