@testable import CrsnapCore
import XCTest

/// The fault-injection hook is honoured only with CRSNAP_TEST_HOOKS=1, and
/// parses its modes.
final class FaultsTests: XCTestCase {
    func testHooksOffWithoutTheSwitch() {
        XCTAssertNil(Faults.action(at: "take.post-dump", env: ["CRSNAP_FAULT": "kill:take.post-dump"]))
        XCTAssertNil(Faults.action(at: "take.post-dump", env: ["CRSNAP_FAULT": "kill:take.post-dump", "CRSNAP_TEST_HOOKS": "yes"]))
    }

    func testModes() {
        let on = ["CRSNAP_TEST_HOOKS": "1"]
        func a(_ spec: String, _ point: String) -> Faults.Action? {
            Faults.action(at: point, env: on.merging(["CRSNAP_FAULT": spec]) { $1 })
        }
        XCTAssertEqual(a("take.manifest", "take.manifest"), .fail)
        XCTAssertEqual(a("fail:take.manifest", "take.manifest"), .fail)
        XCTAssertEqual(a("kill:rollback.aside", "rollback.aside"), .kill)
        XCTAssertEqual(a("enospc:take.fs-snapshot", "take.fs-snapshot"), .enospc)
        XCTAssertEqual(a("sleep=250:take.post-dump", "take.post-dump"), .sleep(250))
        XCTAssertEqual(a("killafter=40:rollback.restore", "rollback.restore"), .killAfter(40))
        XCTAssertEqual(a("kill:take.thawed,fail:take.manifest", "take.manifest"), .fail)
        XCTAssertNil(a("kill:take.thawed", "take.manifest"))
        XCTAssertNil(a("bogus:take.manifest", "take.manifest"))
        XCTAssertNil(a("take.manifest", "take.manifes"))
    }
}
