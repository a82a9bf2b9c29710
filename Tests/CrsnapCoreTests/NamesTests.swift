@testable import CrsnapCore
import XCTest

/// Asserts that `body` throws a CrsnapError of `kind` whose message contains every one of `parts`.
func assertCrsnapError<T>(_ kind: CrsnapError.Kind, containing parts: [String],
                          _ body: @autoclosure () throws -> T,
                          file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertThrowsError(try body(), file: file, line: line) { error in
        guard let e = error as? CrsnapError else {
            return XCTFail("not a CrsnapError: \(error)", file: file, line: line)
        }
        XCTAssertEqual(e.kind, kind, "kind of: \(e.message)", file: file, line: line)
        for p in parts {
            XCTAssertTrue(e.message.contains(p), "\"\(e.message)\" does not contain \"\(p)\"", file: file, line: line)
        }
    }
}

final class NamesTests: XCTestCase {
    func testAcceptedNames() throws {
        for name in ["web", "a", "A", "0", "db-1", "my_app", "v1.2.3", "a.", "_", "Z9-_.z",
                     String(repeating: "x", count: 64)] {
            XCTAssertNoThrow(try Names.validate(name), name)
        }
    }

    func testEmptyIsRefused() {
        assertCrsnapError(.usage, containing: ["container name", "\"\"", "empty"], try Names.validate(""))
    }

    func testLongerThan64IsRefused() {
        let name = String(repeating: "y", count: 65)
        assertCrsnapError(.usage, containing: [String(repeating: "y", count: 20), "64"], try Names.validate(name))
        // 64 letters plus one multi-byte one is over the byte limit too.
        assertCrsnapError(.usage, containing: ["64"], try Names.validate(String(repeating: "y", count: 63) + "é"))
    }

    func testLeadingDotIsRefused() {
        assertCrsnapError(.usage, containing: ["\".hidden\"", "dot"], try Names.validate(".hidden"))
        assertCrsnapError(.usage, containing: ["\"..\"", "dot"], try Names.validate(".."))
        assertCrsnapError(.usage, containing: ["\".\"", "dot"], try Names.validate("."))
    }

    func testBadCharactersAreRefused() {
        assertCrsnapError(.usage, containing: ["\"a/b\"", "'/'"], try Names.validate("a/b"))
        assertCrsnapError(.usage, containing: ["\"../x\""], try Names.validate("../x"))
        assertCrsnapError(.usage, containing: ["\"my app\"", "U+20"], try Names.validate("my app"))
        assertCrsnapError(.usage, containing: ["\"web@1\"", "'@'"], try Names.validate("web@1"))
        assertCrsnapError(.usage, containing: ["\"wéb\"", "'é'"], try Names.validate("wéb"))
        assertCrsnapError(.usage, containing: ["U+A", "not allowed"], try Names.validate("web\nx"))
        assertCrsnapError(.usage, containing: ["U+9"], try Names.validate("a\tb"))
        assertCrsnapError(.usage, containing: ["U+0"], try Names.validate("a\0b"))
    }

    func testWhatIsNamedInTheMessage() {
        assertCrsnapError(.usage, containing: ["invalid tag \"a b\""], try Names.validate("a b", what: "tag"))
        assertCrsnapError(.usage, containing: ["invalid hostname \"\""], try Names.validate("", what: "hostname"))
    }
}

final class SnapshotIDTests: XCTestCase {
    func testParsesValidIDs() throws {
        XCTAssertEqual(try SnapshotID(parsing: "web@1"), SnapshotID(container: "web", number: 1))
        XCTAssertEqual(try SnapshotID(parsing: "a.b-c_d@42"), SnapshotID(container: "a.b-c_d", number: 42))
        let big = try SnapshotID(parsing: "web@123456789")
        XCTAssertEqual(big.number, 123_456_789)
    }

    func testDescriptionRoundTrips() throws {
        let id = SnapshotID(container: "a.b-c_d", number: 42)
        XCTAssertEqual(id.description, "a.b-c_d@42")
        XCTAssertEqual(try SnapshotID(parsing: id.description), id)
    }

    func testMissingAtIsRefused() {
        assertCrsnapError(.usage, containing: ["\"web\"", "NAME@N"], try SnapshotID(parsing: "web"))
        assertCrsnapError(.usage, containing: ["\"\"", "NAME@N"], try SnapshotID(parsing: ""))
    }

    func testBadNumbersAreRefused() {
        assertCrsnapError(.usage, containing: ["\"web@\"", "not a snapshot number"], try SnapshotID(parsing: "web@"))
        assertCrsnapError(.usage, containing: ["\"web@0\"", "\"0\""], try SnapshotID(parsing: "web@0"))
        assertCrsnapError(.usage, containing: ["\"web@-1\"", "\"-1\""], try SnapshotID(parsing: "web@-1"))
        assertCrsnapError(.usage, containing: ["\"web@01\"", "\"01\""], try SnapshotID(parsing: "web@01"))
        assertCrsnapError(.usage, containing: ["\"web@1x\"", "\"1x\""], try SnapshotID(parsing: "web@1x"))
        assertCrsnapError(.usage, containing: ["\"web@+1\""], try SnapshotID(parsing: "web@+1"))
        assertCrsnapError(.usage, containing: ["\"web@ 1\""], try SnapshotID(parsing: "web@ 1"))
        assertCrsnapError(.usage, containing: ["\"web@99999999999999999999\""],
                          try SnapshotID(parsing: "web@99999999999999999999"))
    }

    /// The name part is checked with Names.validate, so its message names the
    /// container part, not the whole id.
    func testBadContainerPartsAreRefused() {
        assertCrsnapError(.usage, containing: ["container name \"\"", "empty"], try SnapshotID(parsing: "@1"))
        assertCrsnapError(.usage, containing: ["\"../x\"", "dot"], try SnapshotID(parsing: "../x@1"))
        assertCrsnapError(.usage, containing: ["\"a/b\""], try SnapshotID(parsing: "a/b@1"))
    }

    /// The id is split at the last '@': "web@1@2" is container "web@1", number 2,
    /// and "web@1" is not a valid name.
    func testSplitsAtTheLastAt() {
        assertCrsnapError(.usage, containing: ["container name \"web@1\"", "'@'"], try SnapshotID(parsing: "web@1@2"))
    }
}

final class ErrorsTests: XCTestCase {
    func testExitCodes() {
        XCTAssertEqual(CrsnapError(.failed, "x").exitCode, 1)
        XCTAssertEqual(CrsnapError(.notFound, "x").exitCode, 3)
        XCTAssertEqual(CrsnapError(.conflict, "x").exitCode, 4)
        XCTAssertEqual(CrsnapError(.usage, "x").exitCode, 64)
    }

    func testDescriptionIsTheMessage() {
        let e = CrsnapError(.conflict, "container \"web\" is not running")
        XCTAssertEqual(e.description, "container \"web\" is not running")
        XCTAssertEqual("\(e)", "container \"web\" is not running")
    }
}

final class UserSpecTests: XCTestCase {
    func testUserAndGroupNumbers() throws {
        XCTAssertEqual(try UserSpec(parsing: "1000").description, "1000:1000", "the group defaults to the user's number")
        XCTAssertEqual(try UserSpec(parsing: "0:5").description, "0:5")
        XCTAssertEqual(try UserSpec(parsing: "4294967294:0").uid, 4_294_967_294)
        for bad in ["", ":", "1:", ":1", "x", "1:x", "1:2:3", "-1", "+1", "4294967295", "1 ", "١"] {
            XCTAssertThrowsError(try UserSpec(parsing: bad), "\(bad)") { e in
                XCTAssertTrue("\(e)".contains("invalid --user"), "\(e)")
            }
        }
    }
}
