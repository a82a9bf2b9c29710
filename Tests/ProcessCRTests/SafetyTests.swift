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
