import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// list/show report a snapshot's exclusive file bytes beside its images, and
/// prune --max-size counts both.
final class SizeTests: XCTestCase {
    var started: [String] = []

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        for name in started { _ = try? crsnap(["rm", "--force", name]) }
    }

    func rows(_ name: String) throws -> [[String: Any]] {
        try JSONSerialization.jsonObject(with: Data(try crsnapOK(["list", name, "--json"]).utf8)) as? [[String: Any]] ?? []
    }

    func testExclusiveBytesFollowTheExtentsOnlyASnapshotHolds() throws {
        let name = uniqueName("it-size")
        try crsnapOK(["run", name, "--", "sleep", "100000"])
        started.append(name)
        let mib = UInt64(1 << 20)
        // @1 holds a file the container then rewrites and deletes: its
        // extents are @1's alone. @2 holds the rewrite, deleted before @3.
        // @3's new file is still live: shared, not exclusive.
        try crsnapOK(["exec", name, "--", "sh", "-c", "head -c 8M /dev/urandom > /srv/a"])
        try crsnapOK(["take", name])
        try crsnapOK(["exec", name, "--", "sh", "-c", "head -c 6M /dev/urandom > /srv/a"])
        try crsnapOK(["take", name])
        try crsnapOK(["exec", name, "--", "sh", "-c", "rm /srv/a && head -c 4M /dev/urandom > /srv/b"])
        try crsnapOK(["take", name])
        let r = try rows(name)
        let excl = r.map { ($0["fs_exclusive_bytes"] as? NSNumber)?.uint64Value ?? 0 }
        XCTAssertEqual(r.count, 3)
        XCTAssertGreaterThanOrEqual(excl[0], 8 * mib, "\(excl)")
        XCTAssertLessThan(excl[0], 9 * mib, "\(excl)")
        XCTAssertGreaterThanOrEqual(excl[1], 6 * mib, "\(excl)")
        XCTAssertLessThan(excl[1], 7 * mib, "\(excl)")
        XCTAssertLessThan(excl[2], mib, "the live container shares @3's new file: \(excl)")
        let show = try JSONSerialization.jsonObject(with: Data(try crsnapOK(["show", "\(name)@3", "--json"]).utf8)) as? [String: Any]
        let total = (show?["fs_total_bytes"] as? NSNumber)?.uint64Value ?? 0
        XCTAssertGreaterThanOrEqual(total, 4 * mib, "all of @3's extents count in its total")
        XCTAssertEqual((show?["fs_exclusive_bytes"] as? NSNumber)?.uint64Value, excl[2])
        let table = try crsnapOK(["list", name])
        XCTAssertTrue(table.contains("FS EXCL") && table.contains("8.0 MiB"), table)

        // Deleting @2 leaves @1's count alone (nothing was shared between them).
        // A limit the images alone would meet deletes @1 once its files count.
        let images = r.map { ($0["images_bytes"] as? NSNumber)?.uint64Value ?? 0 }
        let all = images.reduce(0, +) + excl.reduce(0, +)
        let limit = all - images[0] - excl[0] + 1
        XCTAssertGreaterThan(limit, images.reduce(0, +), "the images alone would fit")
        let planned = try crsnapOK(["prune", name, "--max-size", "\(limit)", "--dry-run"])
        XCTAssertEqual(planned.split(separator: "\n"), ["\(name)@1"])
        try crsnapOK(["delete", "\(name)@2"])
        let after = try rows(name).map { ($0["fs_exclusive_bytes"] as? NSNumber)?.uint64Value ?? 0 }
        XCTAssertEqual(after.first, excl[0])
    }
}
