@testable import CrsnapCore
import FSSnapshot
import Foundation
import ProcessCR
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The copy fallback of FileClone and the scan for unlinked open files, on
/// this process's own files (no container needed).
final class FileCloneTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = "/var/tmp/crsnap-unit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: dir)
    }

    func testCopyKeepsContentAndHoles() throws {
        let src = try Sys.open("\(dir)/sparse", O_RDWR | O_CREAT, mode: 0o600)
        defer { Sys.close(src) }
        let size: off_t = 64 << 20
        XCTAssertEqual(ftruncate(src, size), 0)
        let chunk = [UInt8]((0..<65536).map { UInt8($0 & 0xff) })
        for off: off_t in [0, 20 << 20, size - 65536] {
            XCTAssertEqual(chunk.withUnsafeBytes { pwrite(src, $0.baseAddress, $0.count, off) }, chunk.count)
        }
        let (how, copied) = try FileClone.file(at: "\(dir)/copy", from: src, mode: 0o640, allowReflink: false)
        XCTAssertEqual(how, .copied)
        XCTAssertEqual(copied, 3 * 65536, "only the data extents are copied")
        let st = try Sys.fileStatus("\(dir)/copy")
        XCTAssertEqual(st.st_size, size)
        XCTAssertEqual(st.st_mode & 0o7777, 0o640)
        XCTAssertLessThan(Int(st.st_blocks) * 512, 8 << 20, "the holes stay holes")
        let a = try Sys.readFile("\(dir)/sparse"), b = try Sys.readFile("\(dir)/copy")
        XCTAssertTrue(a == b, "same content")
        XCTAssertThrowsError(try FileClone.file(at: "\(dir)/copy", from: src), "never overwrites a file")
    }

    func testScanFindsThisProcessesUnlinkedFileAndSkipsTmpfs() throws {
        let path = "\(dir)/gone"
        let fd = try Sys.open(path, O_RDWR | O_CREAT, mode: 0o600)
        defer { Sys.close(fd) }
        try Sys.write(fd, Array("held open".utf8), path)
        try Sys.unlink(path)
        // One on tmpfs (like memfd and shared memory): CRIU's to handle.
        let shm = "/dev/shm/crsnap-unit-\(getpid())"
        let shmFd = open(shm, O_RDWR | O_CREAT, 0o600)
        unlink(shm)
        defer { if shmFd >= 0 { Sys.close(shmFd) } }
        var st = Glibc.stat()
        XCTAssertEqual(fstat(fd, &st), 0)
        let found = OpenFiles.unlinked(pids: [getpid()]) { _ in true }
        defer { OpenFiles.close(found) }
        let mine = found.filter { $0.path == path }
        XCTAssertEqual(mine.count, 1, "found: \(found.map(\.path))")
        guard let f = mine.first else { return }
        XCTAssertEqual(f.size, 9)
        XCTAssertTrue(f.held)
        XCTAssertTrue(f.key.hasPrefix("file[") && f.key.hasSuffix(":\(String(UInt64(st.st_ino), radix: 16))]"), f.key)
        XCTAssertFalse(found.contains { $0.path == shm }, "a tmpfs file is CRIU's: \(found.map(\.path))")
        XCTAssertTrue(OpenFiles.unlinked(pids: [getpid()]) { _ in false }.isEmpty, "filesystems not accepted are skipped")
    }
}
