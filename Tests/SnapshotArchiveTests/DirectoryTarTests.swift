import Foundation
import SnapshotArchive
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A directory tree as a tar: the size planned before writing is the size
/// written, and GNU tar unpacks the same tree (kinds, modes, owners, link
/// targets, devices, long names).
final class DirectoryTarTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "dirtar-test-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir + "/src", withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func run(_ argv: [String]) throws -> (Int32, String) { try runIn(dir, argv) }

    /// glibc's device number for small major and minor numbers.
    func dev(_ major: UInt, _ minor: UInt) -> dev_t { dev_t(major << 8 | minor) }

    func lstatOf(_ path: String) -> stat {
        var st = stat()
        XCTAssertEqual(lstat(path, &st), 0, path)
        return st
    }

    func testATreeRoundTripsThroughGNUTarAtItsPlannedSize() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/tar") else { throw XCTSkip("no tar") }
        let src = dir + "/src"
        let deep = "a/" + String(repeating: "d", count: 90) + "/" + String(repeating: "f", count: 60)
        try FileManager.default.createDirectory(atPath: "\(src)/\((deep as NSString).deletingLastPathComponent)",
                                                withIntermediateDirectories: true)
        try Data((0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }).write(to: URL(fileURLWithPath: "\(src)/\(deep)"))
        try Data("x".utf8).write(to: URL(fileURLWithPath: "\(src)/a/small"))
        XCTAssertEqual(chown("\(src)/a/small", 4_000_000, 1234), 0, "an id beyond ustar's 8 octal digits")
        XCTAssertEqual(chmod("\(src)/a/small", 0o4751), 0, "after chown, which clears set-uid")
        XCTAssertEqual(link("\(src)/a/small", "\(src)/hard"), 0)
        XCTAssertEqual(symlink("/target/" + String(repeating: "t", count: 120), "\(src)/long-link"), 0)
        XCTAssertEqual(mkfifo("\(src)/fifo", 0o640), 0)
        XCTAssertEqual(mknod("\(src)/null", S_IFCHR | 0o666, dev(1, 3)), 0)
        XCTAssertEqual(mknod("\(src)/whiteout", S_IFCHR, dev(0, 0)), 0)

        let plan = try DirectoryTar(root: src) { rel, _ in rel != "whiteout" }
        let sink = MemorySink()
        try plan.write(into: sink)
        XCTAssertFalse(sink.finished, "the sink is left open for the outer archive")
        XCTAssertEqual(UInt64(sink.data.count), plan.size, "written as planned")
        XCTAssertEqual(plan.entries.map(\.header.name),
                       ["a/", "a/\(String(repeating: "d", count: 90))/", deep, "a/small", "fifo", "hard", "long-link", "null"])
        try Data(sink.data).write(to: URL(fileURLWithPath: "\(dir)/t.tar"))
        try FileManager.default.createDirectory(atPath: dir + "/out", withIntermediateDirectories: true)
        let (status, said) = try run(["/usr/bin/tar", "--numeric-owner", "-xpf", "t.tar", "-C", "out"])
        XCTAssertEqual(status, 0, said)

        let out = dir + "/out"
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(out)/\(deep)")), try Data(contentsOf: URL(fileURLWithPath: "\(src)/\(deep)")))
        let small = lstatOf("\(out)/a/small")
        XCTAssertEqual(small.st_mode & 0o7777, 0o4751)
        XCTAssertEqual(small.st_uid, 4_000_000)
        XCTAssertEqual(small.st_gid, 1234)
        XCTAssertEqual(lstatOf("\(out)/hard").st_ino, small.st_ino, "a second name stays a hard link")
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: "\(out)/long-link"), "/target/" + String(repeating: "t", count: 120))
        XCTAssertEqual(lstatOf("\(out)/fifo").st_mode & S_IFMT, S_IFIFO)
        let null = lstatOf("\(out)/null")
        XCTAssertEqual(null.st_mode & S_IFMT, S_IFCHR)
        XCTAssertEqual(null.st_rdev, dev(1, 3))
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(out)/whiteout"), "what include refuses is left out")
    }

    func testAFileThatChangedSizeAfterThePlanIsAnError() throws {
        let src = dir + "/src"
        try Data("abc".utf8).write(to: URL(fileURLWithPath: "\(src)/f"))
        let plan = try DirectoryTar(root: src)
        try Data("abcdef".utf8).write(to: URL(fileURLWithPath: "\(src)/f"))
        XCTAssertThrowsError(try plan.write(into: MemorySink())) { XCTAssertTrue("\($0)".contains("changed while it was archived"), "\($0)") }
    }
}
