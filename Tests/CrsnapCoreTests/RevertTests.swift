@testable import CrsnapCore
import XCTest

final class RevertTests: XCTestCase {
    struct Boom: Error, CustomStringConvertible, Equatable {
        let what: String
        var description: String { "boom: \(what)" }
    }

    func testUndoStepsRunNewestFirstOnFailure() {
        let revert = Revert()
        var ran: [String] = []
        XCTAssertThrowsError(try revert.run { () throws -> Int in
            revert.push("one") { ran.append("one") }
            revert.push("two") { ran.append("two") }
            revert.push("three") { ran.append("three") }
            throw Boom(what: "step four")
        }) { error in
            XCTAssertEqual(error as? Boom, Boom(what: "step four"), "the original error, unchanged: \(error)")
        }
        XCTAssertEqual(ran, ["three", "two", "one"])
        XCTAssertTrue(revert.failures.isEmpty)
    }

    func testOnlyStepsPushedBeforeTheFailureAreUndone() {
        let revert = Revert()
        var ran: [String] = []
        XCTAssertThrowsError(try revert.run {
            revert.push("made a") { ran.append("a") }
            throw Boom(what: "making b")
        })
        XCTAssertEqual(ran, ["a"])
    }

    func testNothingIsUndoneOnSuccessAndTheValueIsReturned() throws {
        let revert = Revert()
        var ran: [String] = []
        let value = try revert.run { () -> String in
            revert.push("one") { ran.append("one") }
            revert.push("two") { ran.append("two") }
            return "done"
        }
        XCTAssertEqual(value, "done")
        XCTAssertEqual(ran, [])
        // Committed: a later unwind has nothing left to run.
        XCTAssertEqual(revert.unwind(), [])
        XCTAssertEqual(ran, [])
    }

    func testCommitDisarmsAndUnwindRunsWhatWasPushedAfter() {
        let revert = Revert()
        var ran: [String] = []
        revert.push("before") { ran.append("before") }
        revert.commit()
        revert.push("after") { ran.append("after") }
        XCTAssertEqual(revert.unwind(), [])
        XCTAssertEqual(ran, ["after"])
    }

    func testAFailingUndoIsCollectedAndDoesNotHideTheOriginalError() {
        let revert = Revert()
        var ran: [String] = []
        XCTAssertThrowsError(try revert.run {
            revert.push("remove staging dir") { ran.append("staging") }
            revert.push("delete volume /x/fs") {
                ran.append("volume")
                throw Boom(what: "volume busy")
            }
            revert.push("end journal") { ran.append("journal") }
            throw Boom(what: "criu dump failed")
        }) { error in
            guard let e = error as? CrsnapError else { return XCTFail("not a CrsnapError: \(error)") }
            XCTAssertEqual(e.kind, .failed)
            XCTAssertTrue(e.message.hasPrefix("boom: criu dump failed"), e.message)
            XCTAssertTrue(e.message.contains("undo left state behind"), e.message)
            XCTAssertTrue(e.message.contains("delete volume /x/fs: boom: volume busy"), e.message)
            XCTAssertFalse(e.message.contains("end journal"), "only the undo that failed is listed: \(e.message)")
        }
        XCTAssertEqual(ran, ["journal", "volume", "staging"], "a failing undo does not stop the older ones")
        XCTAssertEqual(revert.failures, ["delete volume /x/fs: boom: volume busy"])
    }

    func testEveryFailingUndoIsListed() {
        let revert = Revert()
        XCTAssertThrowsError(try revert.run {
            revert.push("first") { throw Boom(what: "1") }
            revert.push("second") { throw Boom(what: "2") }
            throw CrsnapError(.conflict, "original")
        }) { error in
            guard let e = error as? CrsnapError else { return XCTFail("not a CrsnapError: \(error)") }
            XCTAssertEqual(e.kind, .failed, "state left behind makes it a failure")
            XCTAssertTrue(e.message.hasPrefix("original\n"), e.message)
            let second = try? XCTUnwrap(e.message.range(of: "second: boom: 2"))
            let first = try? XCTUnwrap(e.message.range(of: "first: boom: 1"))
            XCTAssertNotNil(second)
            XCTAssertNotNil(first)
            if let second, let first {
                XCTAssertLessThan(second.lowerBound, first.lowerBound, "listed in the order they ran")
            }
        }
    }

    func testTheOriginalErrorKeepsItsKindWhenUndoSucceeds() {
        let revert = Revert()
        XCTAssertThrowsError(try revert.run {
            revert.push("fine") {}
            throw CrsnapError(.conflict, "busy")
        }) { error in
            XCTAssertEqual((error as? CrsnapError)?.kind, .conflict)
            XCTAssertEqual((error as? CrsnapError)?.message, "busy")
        }
    }
}
