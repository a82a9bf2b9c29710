import FSSnapshot
import Foundation
import SnapshotArchive
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A directory tree as a tar: the size planned before writing is the size
/// written, GNU tar unpacks the same tree (kinds, modes, owners, link
/// targets, devices, long names), and so does `unpack`, extended
/// attributes and the top directory included, without ever writing outside.
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

    func setTimes(_ path: String, _ seconds: Int) {
        var times = [timespec(tv_sec: seconds, tv_nsec: 0), timespec(tv_sec: seconds, tv_nsec: 0)]
        XCTAssertEqual(utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW), 0, path)
    }

    func testUnpackMakesTheSameTreeWithAttributesAndTheTop() throws {
        let src = dir + "/src"
        try FileManager.default.createDirectory(atPath: "\(src)/upper/tmp", withIntermediateDirectories: true)
        try Sys.setExtendedAttribute("\(src)/upper/tmp", "trusted.overlay.opaque", Array("y".utf8))
        let body = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        try Data(body).write(to: URL(fileURLWithPath: "\(src)/upper/data"))
        let binary: [UInt8] = [0, 1, 0x0A, 0xFF, 0x3D, 0x20]  // NUL, newline, '=' and ' ' inside a value
        try Sys.setExtendedAttribute("\(src)/upper/data", "user.crsnap-test", binary)
        XCTAssertEqual(chown("\(src)/upper/data", 1000, 4_000_000), 0)
        XCTAssertEqual(chmod("\(src)/upper/data", 0o2755), 0)
        XCTAssertEqual(link("\(src)/upper/data", "\(src)/upper/again"), 0)
        XCTAssertEqual(symlink("../nowhere", "\(src)/upper/link"), 0)
        XCTAssertEqual(lchown("\(src)/upper/link", 7, 8), 0)
        XCTAssertEqual(mkfifo("\(src)/upper/fifo", 0o604), 0)
        XCTAssertEqual(mknod("\(src)/upper/whiteout", S_IFCHR, dev(0, 0)), 0)
        XCTAssertEqual(mknod("\(src)/upper/null", S_IFCHR | 0o666, dev(1, 3)), 0)
        XCTAssertEqual(chmod("\(src)/upper/tmp", 0o1777), 0)
        XCTAssertEqual(chmod(src, 0o751), 0)
        try Sys.setExtendedAttribute(src, "user.top", Array("top".utf8))
        for (path, t) in [("upper/data", 1_600_000_000), ("upper/link", 1_500_000_000), ("upper/tmp", 1_400_000_000), ("", 1_300_000_000)] {
            setTimes(path.isEmpty ? src : "\(src)/\(path)", t)
        }

        let plan = try DirectoryTar(root: src, withRoot: true, xattrs: true)
        XCTAssertEqual(plan.entries.first?.header.name, "./")
        let sink = MemorySink()
        try plan.write(into: sink)
        XCTAssertEqual(UInt64(sink.data.count), plan.size, "written as planned, pax records included")
        let out = dir + "/out"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let bytes = try DirectoryTar.unpack(TarReader(MemorySource(sink.data), tree: true), into: out)
        XCTAssertEqual(bytes, UInt64(body.count), "one file's bytes: its second name is a link")

        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(out)/upper/data")), Data(body))
        let data = lstatOf("\(out)/upper/data")
        XCTAssertEqual(data.st_mode & 0o7777, 0o2755, "set-gid kept: the mode comes after the owner")
        XCTAssertEqual(data.st_uid, 1000)
        XCTAssertEqual(data.st_gid, 4_000_000)
        XCTAssertEqual(data.st_mtim.tv_sec, 1_600_000_000)
        XCTAssertEqual(lstatOf("\(out)/upper/again").st_ino, data.st_ino)
        XCTAssertEqual(try Sys.extendedAttributes("\(out)/upper/data")["user.crsnap-test"], binary)
        XCTAssertEqual(try Sys.extendedAttributes("\(out)/upper/tmp")["trusted.overlay.opaque"], Array("y".utf8))
        let tmp = lstatOf("\(out)/upper/tmp")
        XCTAssertEqual(tmp.st_mode & 0o7777, 0o1777)
        XCTAssertEqual(tmp.st_mtim.tv_sec, 1_400_000_000, "a directory's time is set after what it holds")
        XCTAssertEqual(try Sys.readLink("\(out)/upper/link"), "../nowhere")
        let link = lstatOf("\(out)/upper/link")
        XCTAssertEqual([link.st_uid, link.st_gid], [7, 8])
        XCTAssertEqual(link.st_mtim.tv_sec, 1_500_000_000, "a link's own time")
        XCTAssertEqual(lstatOf("\(out)/upper/fifo").st_mode & 0o7777, 0o604)
        XCTAssertEqual(lstatOf("\(out)/upper/fifo").st_mode & S_IFMT, S_IFIFO)
        XCTAssertEqual(lstatOf("\(out)/upper/whiteout").st_rdev, dev(0, 0))
        XCTAssertEqual(lstatOf("\(out)/upper/whiteout").st_mode & S_IFMT, S_IFCHR)
        XCTAssertEqual(lstatOf("\(out)/upper/null").st_rdev, dev(1, 3))
        let top = lstatOf(out)
        XCTAssertEqual(top.st_mode & 0o7777, 0o751, "the top's mode")
        XCTAssertEqual(top.st_mtim.tv_sec, 1_300_000_000)
        XCTAssertEqual(try Sys.extendedAttributes(out)["user.top"], Array("top".utf8))

        // GNU tar reads the extended attributes as its own.
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/tar") else { return }
        try Data(sink.data).write(to: URL(fileURLWithPath: "\(dir)/t.tar"))
        try FileManager.default.createDirectory(atPath: dir + "/gnu", withIntermediateDirectories: true)
        let (status, said) = try run(["/usr/bin/tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", "t.tar", "-C", "gnu"])
        XCTAssertEqual(status, 0, said)
        XCTAssertEqual(try Sys.extendedAttributes("\(dir)/gnu/upper/data")["user.crsnap-test"], binary)
        XCTAssertEqual(try Sys.extendedAttributes("\(dir)/gnu/upper/tmp")["trusted.overlay.opaque"], Array("y".utf8))
    }

    /// A tar whose entries are `headers` (regular files get "x").
    func tarOf(_ headers: [Tar.Header]) throws -> [UInt8] {
        let sink = MemorySink()
        let w = TarWriter(sink)
        for h in headers {
            if h.kind == .file { try w.add(h, data: Array("x".utf8)) } else { try w.add(h) }
        }
        try w.end()
        return sink.data
    }

    func testUnpackNeverWritesOutsideItsDirectory() throws {
        let out = dir + "/out"
        let file = { (name: String) in Tar.Header(name: name, size: 1) }
        let cases: [(String, [Tar.Header], String)] = [
            ("dot-dot", [file("../escaped")], "leads outside"),
            ("absolute", [file("/\(dir)/escaped")], "leads outside"),
            ("inner dot-dot", [Tar.Header(name: "a/", size: 0, kind: .directory), file("a/../../escaped")], "leads outside"),
            ("through a symlink", [Tar.Header(name: "l", size: 0, kind: .symlink(to: dir)), file("l/escaped")], "before its directory"),
            ("no directory first", [file("d/escaped")], "before its directory"),
            ("hard link out", [Tar.Header(name: "h", size: 0, kind: .hardlink(to: "../src/f"))], "leads outside"),
            ("hard link to a link", [Tar.Header(name: "l", size: 0, kind: .symlink(to: dir)),
                                     Tar.Header(name: "h", size: 0, kind: .hardlink(to: "l"))], "not a file made before it"),
            ("twice", [file("f"), file("f")], "twice"),
            ("a file on top", [file("./")], "not a directory"),
        ]
        try Data("source".utf8).write(to: URL(fileURLWithPath: "\(dir)/src/f"))
        for (what, headers, says) in cases {
            try? FileManager.default.removeItem(atPath: out)
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            XCTAssertThrowsError(try DirectoryTar.unpack(TarReader(MemorySource(try tarOf(headers)), tree: true), into: out), what) {
                XCTAssertTrue("\($0)".contains(says), "\(what): \($0)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/escaped"), what)
            XCTAssertEqual(lstatOf("\(dir)/src/f").st_nlink, 1, what)
        }
        // Without `tree`, a reader takes regular files only, as before.
        XCTAssertThrowsError(try TarReader(MemorySource(try tarOf([Tar.Header(name: "d/", size: 0, kind: .directory)]))).next()) {
            XCTAssertTrue("\($0)".contains("not a regular file"), "\($0)")
        }
    }
}
