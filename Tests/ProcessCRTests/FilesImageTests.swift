import FSSnapshot
import Foundation
@testable import ProcessCR
import XCTest

/// The rewrite of CRIU's files.img that turns captured external files into
/// plain files at their restore path; everything else is kept byte for byte.
final class FilesImageTests: XCTestCase {
    func field(_ n: UInt64, _ payload: [UInt8]) -> [UInt8] { Wire.lengthDelimited(n, payload) }
    func varintField(_ n: UInt64, _ v: UInt64) -> [UInt8] { ImageFixture.varintField(n, v) }

    /// A RegFileEntry: id, flags, pos, fown, name, optional mnt_id and ext, size, mode.
    func reg(id: UInt64, name: String, ext: Bool, mntID: UInt64? = nil) -> [UInt8] {
        var b = varintField(1, id) + varintField(2, 0o100002) + varintField(3, 12345)
        b += field(5, varintField(1, 0) + varintField(2, 0))
        b += field(6, Array(name.utf8))
        if let mntID { b += varintField(7, mntID << 1) }
        b += varintField(8, 4 << 20)
        if ext { b += varintField(9, 1) }
        b += varintField(10, 0o100644)
        return b
    }

    func entry(type: UInt64, id: UInt64, body: [UInt8]) -> [UInt8] {
        varintField(1, type) + varintField(2, id) + field(type == 1 ? 3 : 7, body)
    }

    // FILES_MAGIC
    func image(_ entries: [[UInt8]]) -> [UInt8] { ImageFixture.image(magic: 0x5630_3138, entries) }

    func testExternalFilesBecomePlainFilesAtTheirRestorePath() throws {
        let dir = NSTemporaryDirectory() + "crsnap-files-image-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let plain = entry(type: 1, id: 1, body: reg(id: 1, name: "/usr/bin/python3", ext: false, mntID: 75))
        let other = entry(type: 5, id: 2, body: [0x08, 0x07])
        let external = entry(type: 1, id: 3, body: reg(id: 3, name: "file[4b:114]", ext: true))
        let unknown = entry(type: 1, id: 4, body: reg(id: 4, name: "file[4b:999]", ext: true))
        try Sys.writeAtomically("\(dir)/files.img", image([plain, other, external, unknown]))

        let done = try FilesImage.relocateExternal(in: dir, to: ["file[4b:114]": "/.crsnap-unlinked/0", "file[4b:555]": "/x"])
        XCTAssertEqual(done, ["file[4b:114]"], "only keys the image has are rewritten")
        let want = entry(type: 1, id: 3, body: {
            var r = reg(id: 3, name: "file[4b:114]", ext: false)
            // name moves to the end of the message; the other fields stay as they were
            let nameField = field(6, Array("file[4b:114]".utf8))
            let at = r.firstRange(of: nameField)!
            r.removeSubrange(at)
            return r + field(6, Array("/.crsnap-unlinked/0".utf8))
        }())
        XCTAssertEqual(try Sys.readFile("\(dir)/files.img"), image([plain, other, want, unknown]))
        // Nothing left to rewrite: the file is not written again.
        XCTAssertEqual(try FilesImage.relocateExternal(in: dir, to: ["file[4b:114]": "/.crsnap-unlinked/0"]), [])
    }

    func testRegularFilesListsPathFlagsAndTheSizeCRIUChecks() throws {
        let dir = NSTemporaryDirectory() + "crsnap-files-image-regular-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // An append-only log: CRIU records no size for it.
        var log = varintField(1, 5) + varintField(2, 0o2001) + varintField(3, 0)
        log += field(5, varintField(1, 0)) + field(6, Array("/var/log/app.log".utf8)) + varintField(10, 0o100644)
        try Sys.writeAtomically("\(dir)/files.img", image([
            entry(type: 1, id: 1, body: reg(id: 1, name: "/srv/data", ext: false, mntID: 75)),
            entry(type: 5, id: 2, body: [0x08, 0x07]),
            entry(type: 1, id: 5, body: log),
        ]))
        XCTAssertEqual(try FilesImage.regularFiles(in: dir), [
            .init(path: "/srv/data", flags: 0o100002, size: 4 << 20),
            .init(path: "/var/log/app.log", flags: 0o2001, size: nil),
        ])
    }

    func testAMalformedImageIsRefusedAndLeftAlone() throws {
        let dir = NSTemporaryDirectory() + "crsnap-files-image-bad-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var bad = image([entry(type: 1, id: 1, body: reg(id: 1, name: "file[1:2]", ext: true))])
        bad.removeLast(3)
        try Sys.writeAtomically("\(dir)/files.img", bad)
        XCTAssertThrowsError(try FilesImage.relocateExternal(in: dir, to: ["file[1:2]": "/y"]))
        XCTAssertEqual(try Sys.readFile("\(dir)/files.img"), bad)
    }
}

/// The timerfd repair: CRIU records a periodic timer that fired during the
/// freeze with value 0 and would restore it disarmed (criu#3162).
final class TimerfdImageTests: XCTestCase {
    func v(_ n: UInt64, _ x: UInt64) -> [UInt8] { ImageFixture.varintField(n, x) }

    /// A FileEntry of type TIMERFD with its TimerfdEntry (id, flags, fown,
    /// clockid, ticks, settime_flags, vsec, vnsec, isec, insec).
    func timer(id: UInt64, flags: UInt64 = 0, value: (UInt64, UInt64), interval: (UInt64, UInt64), ticks: UInt64 = 1) -> [UInt8] {
        var t = v(1, id) + v(2, 0o4002) + Wire.lengthDelimited(3, v(1, 0) + v(2, 0)) + v(4, 1) + v(5, ticks) + v(6, flags)
        t += v(7, value.0) + v(8, value.1) + v(9, interval.0) + v(10, interval.1)
        return v(1, 17) + v(2, id) + Wire.lengthDelimited(12, t)
    }

    func testAPeriodicTimerThatFiredDuringTheFreezeGetsOneIntervalToItsNextExpiry() throws {
        let dir = NSTemporaryDirectory() + "crsnap-timerfd-image-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let expired = timer(id: 1, value: (0, 0), interval: (0, 5_000_000))
        let running = timer(id: 2, value: (0, 2_706_801), interval: (0, 5_000_000), ticks: 0)
        let oneShot = timer(id: 3, value: (0, 0), interval: (0, 0))
        let absolute = timer(id: 4, flags: 1, value: (0, 0), interval: (1, 0))
        let other = v(1, 5) + v(2, 9) + Wire.lengthDelimited(7, [0x08, 0x07])
        let magic: UInt32 = 0x5630_3138
        try Sys.writeAtomically("\(dir)/files.img", ImageFixture.image(magic: magic, [expired, running, oneShot, absolute, other]))

        XCTAssertEqual(try FilesImage.rearmExpiredTimers(in: dir), 1)
        // Its value and interval fields move to the end; the rest stays.
        let want: [UInt8] = {
            var t = v(1, 1) + v(2, 0o4002) + Wire.lengthDelimited(3, v(1, 0) + v(2, 0)) + v(4, 1) + v(5, 1) + v(6, 0)
            t += v(9, 0) + v(10, 5_000_000) + v(7, 0) + v(8, 5_000_000)
            return v(1, 17) + v(2, 1) + Wire.lengthDelimited(12, t)
        }()
        XCTAssertEqual(try Sys.readFile("\(dir)/files.img"), ImageFixture.image(magic: magic, [want, running, oneShot, absolute, other]))
        XCTAssertEqual(try FilesImage.rearmExpiredTimers(in: dir), 0, "a second pass changes nothing")
    }
}
