import Foundation
@testable import ProcessCR
import XCTest

/// A recorded pid is not an identity: the checks that tell the recorded
/// process from whatever has its number now.
final class ProcessIdentityTests: XCTestCase {
    let recorded = ProcessIdentity(pid: 18, start: 5000, boot: "boot-a", pidNamespace: "pid:[1]")

    func observed(boot: String? = "boot-a", ns: String? = "pid:[1]", starts: [pid_t: UInt64] = [18: 5000]) -> ProcessIdentity.Observed {
        ProcessIdentity.Observed(boot: boot, pidNamespace: ns) { starts[$0] }
    }

    func testTheSameProcessIsAlive() {
        XCTAssertNil(recorded.goneReason(now: observed()))
    }

    func testAnotherProcessWithTheSameNumberIsNot() {
        let why = recorded.goneReason(now: observed(starts: [18: 7777]))
        XCTAssertEqual(why, "pid 18 now belongs to another process")
    }

    func testAnExitedProcessIsNot() {
        XCTAssertEqual(recorded.goneReason(now: observed(starts: [:])), "pid 18 has exited")
    }

    func testARebootEndsEveryRecordedProcess() {
        let why = recorded.goneReason(now: observed(boot: "boot-b"))
        XCTAssertTrue(why?.contains("restarted") == true, why ?? "nil")
    }

    func testAPidFromAnotherPidNamespaceMeansNothingHere() {
        let why = recorded.goneReason(now: observed(ns: "pid:[2]"))
        XCTAssertTrue(why?.contains("another pid namespace") == true, why ?? "nil")
    }

    func testOldRecordsWithoutAStartTimeFallBackToThePid() {
        let old = ProcessIdentity(pid: 18, start: nil, boot: nil, pidNamespace: nil)
        XCTAssertNil(old.goneReason(now: observed(starts: [18: 1])))
        XCTAssertNotNil(old.goneReason(now: observed(starts: [:])))
    }

    func testNonPositivePidsAreNeverAlive() {
        for pid: pid_t in [0, -1] {
            let id = ProcessIdentity(pid: pid, start: nil, boot: nil, pidNamespace: nil)
            XCTAssertNotNil(id.goneReason(now: observed(starts: [pid: 1])))
        }
    }

    func testThisProcessIsItself() {
        let me = ProcessIdentity.of(getpid())
        XCTAssertNotNil(me.start)
        XCTAssertNotNil(me.boot)
        XCTAssertTrue(me.isAlive)
        var other = me
        other.start = (me.start ?? 0) + 1
        XCTAssertFalse(other.isAlive)
        XCTAssertTrue(me.waitGone(timeout: 0) == false)
    }

    func testCodableKeepsEveryField() throws {
        let data = try JSONEncoder().encode(recorded)
        XCTAssertEqual(try JSONDecoder().decode(ProcessIdentity.self, from: data), recorded)
    }
}
