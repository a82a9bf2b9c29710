import FSSnapshot
import Foundation
@testable import ProcessCR
import XCTest

/// The preconditions that keep crsnap's mistakes off the machine.
final class SafetyTests: XCTestCase {
    func testNeverSignalsPidZeroOneOrANegativePid() {
        for pid: pid_t in [0, 1, -1, -42] {
            XCTAssertNotNil(Safety.signalRefusal(pid), "pid \(pid)")
            XCTAssertThrowsError(try Safety.signal(pid, 0), "pid \(pid)") { error in
                XCTAssertTrue("\(error)".contains("refuse"), "\(error)")
                XCTAssertEqual((error as? SystemError)?.errno, EPERM)
            }
        }
        XCTAssertNil(Safety.signalRefusal(2))
        // a real process, signal 0: allowed and delivered
        XCTAssertNoThrow(try Safety.signal(getpid(), 0))
    }

    func testSignallingAGoneProcessIsNotAnError() {
        // pid_max is at most 2^22: this pid cannot exist
        XCTAssertNoThrow(try Safety.signal(pid_t(1 << 23), 0))
    }

    func target(_ path: String, procs: [pid_t] = [500, 501], selfCg: String? = "/cg/freezer/user.slice",
                initCg: String? = "/cg/freezer") -> Safety.FreezeTarget {
        Safety.FreezeTarget(path: path, crsnapRoot: "/cg/freezer/crsnap", procs: procs, selfPid: 400,
                            selfCgroup: selfCg, initCgroup: initCg)
    }

    func testFreezesOnlyAContainersOwnCgroup() {
        XCTAssertNil(Safety.freezeRefusal(target("/cg/freezer/crsnap/abc.web")))
        XCTAssertNil(Safety.freezeRefusal(target("/cg/freezer/crsnap/abc.web/")))
        for bad in ["/cg/freezer", "/cg/freezer/crsnap", "/cg/freezer/crsnap/", "/cg/freezer/system.slice", "/cg/freezer/crsnapx/a"] {
            XCTAssertNotNil(Safety.freezeRefusal(target(bad)), bad)
        }
    }

    func testNeverFreezesCrsnapOrTheInit() {
        let c = "/cg/freezer/crsnap/abc.web"
        XCTAssertTrue(Safety.freezeRefusal(target(c, procs: [500, 400]))?.contains("crsnap's own process") == true)
        XCTAssertTrue(Safety.freezeRefusal(target(c, procs: [1, 500]))?.contains("pid 1") == true)
        // crsnap or the init in the cgroup, or below it (a freezer freezes descendants)
        XCTAssertNotNil(Safety.freezeRefusal(target(c, selfCg: c)))
        XCTAssertNotNil(Safety.freezeRefusal(target(c, selfCg: c + "/helper")))
        XCTAssertNotNil(Safety.freezeRefusal(target(c, initCg: c)))
        // a sibling whose name starts the same is not inside
        XCTAssertNil(Safety.freezeRefusal(target(c, selfCg: c + "2")))
    }

    func testALiveCheckRefusesCrsnapsOwnCgroup() throws {
        // This process's own freezer cgroup, seen as if it were a container's:
        // only the name check or the self check can stop it, never a freeze.
        guard let h = try? FreezerCgroup.hierarchy() else { throw XCTSkip("no freezer hierarchy mounted") }
        let own = FreezerCgroup(path: "\(h.root)/crsnap/x", version: h.version)
        XCTAssertEqual(own.crsnapRoot, "\(h.root)/crsnap")
        let mine = own.cgroupOf("self")
        XCTAssertNotNil(mine)
        if let mine {
            let asContainer = FreezerCgroup(path: mine, version: h.version)
            XCTAssertThrowsError(try asContainer.checkFreezable())
        }
    }

    func testNoNetworkLockOnTheHostsNetwork() {
        XCTAssertNil(Safety.networkLockRefusal(lock: false, treeNet: "net:[1]", selfNet: "net:[1]"))
        XCTAssertNil(Safety.networkLockRefusal(lock: true, treeNet: "net:[2]", selfNet: "net:[1]"))
        XCTAssertNotNil(Safety.networkLockRefusal(lock: true, treeNet: "net:[1]", selfNet: "net:[1]"))
        XCTAssertNotNil(Safety.networkLockRefusal(lock: true, treeNet: nil, selfNet: "net:[1]"))
    }

    /// crsnap never reboots, powers off or halts the machine: no call of
    /// reboot(2) anywhere in its sources.
    func testNoSourceCallsReboot() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources")
        let e = FileManager.default.enumerator(atPath: sources.path)
        var offenders: [String] = []
        var scanned = 0
        while let rel = e?.nextObject() as? String {
            guard rel.hasSuffix(".swift") || rel.hasSuffix(".c") || rel.hasSuffix(".h") else { continue }
            let text = try String(contentsOfFile: sources.appendingPathComponent(rel).path, encoding: .utf8)
            scanned += 1
            for needle in ["reboot(", "SYS_reboot", "LINUX_REBOOT", "RB_AUTOBOOT", "RB_POWER_OFF", "RB_HALT"] where text.contains(needle) {
                offenders.append("\(rel): \(needle)")
            }
        }
        XCTAssertGreaterThan(scanned, 20)
        XCTAssertEqual(offenders, [])
    }
}

/// The guards the network module will go through: address ranges and nftables.
final class NetworkSafetyTests: XCTestCase {
    func testParsesNetworks() {
        XCTAssertEqual(IPv4Network("10.88.0.0/16"), IPv4Network(address: 0x0A58_0000, prefix: 16))
        XCTAssertEqual(IPv4Network("192.168.1.7")?.prefix, 32)
        XCTAssertEqual(IPv4Network("10.88.0.0/16")?.description, "10.88.0.0/16")
        for bad in ["", "10.88.0/16", "10.88.0.256/16", "10.88.0.0/33", "10.88.0.0/-1", "10.88.0.0/+8", "a.b.c.d/8", "10.88.0.0/16/2", "1.2.3.4 "] {
            XCTAssertNil(IPv4Network(bad), bad)
        }
    }

    func testOverlap() {
        let r = IPv4Network("10.88.0.0/16")!
        XCTAssertTrue(r.overlaps(IPv4Network("10.88.3.0/24")!))
        XCTAssertTrue(r.overlaps(IPv4Network("10.0.0.0/8")!))
        XCTAssertFalse(r.overlaps(IPv4Network("10.89.0.0/16")!))
        XCTAssertFalse(r.overlaps(IPv4Network("192.168.0.0/16")!))
    }

    func testRefusesARangeTheHostHas() {
        let host: [(network: IPv4Network, what: String)] = [
            (IPv4Network("0.0.0.0/0")!, "route via eth0"),
            (IPv4Network("172.16.0.0/12")!, "route via eth0"),
            (IPv4Network("127.0.0.0/8")!, "address 127.0.0.1/8 on lo"),
        ]
        XCTAssertNil(Safety.addressRangeRefusal(IPv4Network("10.88.0.0/16")!, host: host), "the default route overlaps everything and does not count")
        XCTAssertTrue(Safety.addressRangeRefusal(IPv4Network("172.17.0.0/16")!, host: host)?.contains("172.16.0.0/12 (route via eth0)") == true)
        XCTAssertNotNil(Safety.addressRangeRefusal(IPv4Network("127.1.0.0/16")!, host: host))
    }

    func testReadsRoutes() {
        let text = """
        Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
        eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
        eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
        """
        let r = Safety.routes(procNetRoute: text)
        XCTAssertEqual(r.map(\.network), [IPv4Network("192.168.0.0/24")!])
        XCTAssertEqual(r.first?.what, "route via eth0")
        // this machine: whatever it has, loopback's address is among them
        XCTAssertTrue(Safety.hostNetworks().contains { $0.network.overlaps(IPv4Network("127.0.0.1")!) })
    }

    func testTouchesOnlyItsOwnNftablesTables() {
        XCTAssertNil(Safety.nftablesRefusal("""
        add table inet crsnap
        add chain inet crsnap postrouting { type nat hook postrouting priority 100 ; }
        add rule inet crsnap postrouting ip saddr 10.88.0.0/16 masquerade
        flush table inet crsnap; delete table inet crsnap
        list ruleset
        list tables ip
        """))
        for bad in ["flush ruleset", "delete ruleset", "reset ruleset", "add table inet filter", "flush table ip nat",
                    "add rule ip filter input drop", "delete table crsnap0x; delete table docker", "insert rule inet", "nft -f /etc/nftables.conf", "flush tables ip"] {
            XCTAssertNotNil(Safety.nftablesRefusal(bad), bad)
        }
    }
}
