@testable import CrsnapCore
import FSSnapshot
import Foundation
import XCTest

/// A directory under the system temp dir, removed when released.
final class TempDir {
    let path: String

    init() throws {
        path = (NSTemporaryDirectory() as NSString).appendingPathComponent("crsnap-test-" + UUID().uuidString)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

final class ManifestTests: XCTestCase {
    static func sample(tag: String? = "before-upgrade", criu: String? = "4.2.1") -> Manifest {
        Manifest(id: "web@7", container: "web", number: 7, tag: tag,
                 created: Date(timeIntervalSince1970: 1_700_000_123), kind: .overlay, backend: "btrfs",
                 log_pipe: "pipe:[123456]", init_pid_ns: 1, criu_version: criu,
                 stats: .init(frozen_ms: 152.5, fs_snapshot_ms: 6.25, dump_ms: 310.0, images_bytes: 240_123_904))
    }

    func jsonObject(_ m: Manifest) throws -> [String: Any] {
        let data = try JSON.encoder().encode(m)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func testFieldNamesAreExactlyTheDocumentedOnes() throws {
        let obj = try jsonObject(Self.sample())
        XCTAssertEqual(Set(obj.keys), ["format", "id", "container", "number", "tag", "created", "kind", "backend",
                                       "log_pipe", "init_pid_ns", "criu_version", "stats"])
        let stats = try XCTUnwrap(obj["stats"] as? [String: Any])
        XCTAssertEqual(Set(stats.keys), ["frozen_ms", "fs_snapshot_ms", "dump_ms", "images_bytes"])
    }

    func testFieldValuesAreAsWritten() throws {
        let obj = try jsonObject(Self.sample())
        XCTAssertEqual(obj["format"] as? Int, 1)
        XCTAssertEqual(obj["id"] as? String, "web@7")
        XCTAssertEqual(obj["container"] as? String, "web")
        XCTAssertEqual(obj["number"] as? Int, 7)
        XCTAssertEqual(obj["tag"] as? String, "before-upgrade")
        XCTAssertEqual(obj["created"] as? String, "2023-11-14T22:15:23Z", "ISO 8601, UTC")
        XCTAssertEqual(obj["kind"] as? String, "overlay")
        XCTAssertEqual(obj["backend"] as? String, "btrfs")
        XCTAssertEqual(obj["log_pipe"] as? String, "pipe:[123456]")
        XCTAssertEqual(obj["init_pid_ns"] as? Int, 1)
        XCTAssertEqual(obj["criu_version"] as? String, "4.2.1")
        let stats = try XCTUnwrap(obj["stats"] as? [String: Any])
        XCTAssertEqual(stats["frozen_ms"] as? Double, 152.5)
        XCTAssertEqual(stats["fs_snapshot_ms"] as? Double, 6.25)
        XCTAssertEqual(stats["dump_ms"] as? Double, 310.0)
        XCTAssertEqual((stats["images_bytes"] as? NSNumber)?.uint64Value, 240_123_904)
    }

    func testOptionalFieldsAreLeftOutWhenNil() throws {
        let obj = try jsonObject(Self.sample(tag: nil, criu: nil))
        XCTAssertNil(obj["tag"])
        XCTAssertNil(obj["criu_version"])
        XCTAssertEqual(obj.count, 10)
    }

    func testASnapshotWithoutItsConnectionsRestoresThemClosedWhateverWasAsked() throws {
        var m = Self.sample()
        for t in TCPRestore.allCases { XCTAssertEqual(t.respecting(m), t, "connections saved: \(t) as asked") }
        m.tcp_closed = true
        XCTAssertEqual(try jsonObject(m)["tcp_closed"] as? Bool, true)
        for t in TCPRestore.allCases { XCTAssertEqual(t.respecting(m), .close, "connections not saved: \(t) becomes close") }
    }

    func testRoundTripThroughAFile() throws {
        let dir = try TempDir()
        let path = "\(dir.path)/manifest.json"
        for m in [Self.sample(), Self.sample(tag: nil, criu: nil)] {
            try JSON.write(m, to: path)
            let back = try JSON.read(Manifest.self, from: path)
            XCTAssertEqual(back, m)
        }
        let text = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertTrue(text.hasSuffix("}\n"), "ends with a newline")
    }

    func testReadsAHandWrittenManifest() throws {
        let dir = try TempDir()
        let path = "\(dir.path)/manifest.json"
        let text = """
            {"format": 1, "id": "db@3", "container": "db", "number": 3, "created": "2024-02-29T12:00:00Z",
             "kind": "subvolume", "backend": "btrfs", "log_pipe": "pipe:[9]", "init_pid_ns": 1,
             "stats": {"frozen_ms": 1, "fs_snapshot_ms": 2, "dump_ms": 3, "images_bytes": 4}}
            """
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let m = try JSON.read(Manifest.self, from: path)
        XCTAssertEqual(m.id, "db@3")
        XCTAssertEqual(m.kind, .subvolume)
        XCTAssertNil(m.tag)
        XCTAssertEqual(m.created, Date(timeIntervalSince1970: 1_709_208_000))
        XCTAssertEqual(m.stats.images_bytes, 4)
    }

    func testTruncatedManifestIsAFailureNamingThePath() throws {
        let dir = try TempDir()
        let path = "\(dir.path)/manifest.json"
        let full = try JSON.encoder().encode(Self.sample())
        try full.prefix(full.count / 2).write(to: URL(fileURLWithPath: path))
        assertCrsnapError(.failed, containing: [path, "does not parse"], try JSON.read(Manifest.self, from: path))
    }

    func testGarbageManifestIsAFailureNamingThePath() throws {
        let dir = try TempDir()
        for (i, bytes) in [[0xFF, 0x00, 0x13, 0x37], Array("not json at all".utf8), [], Array("{}".utf8),
                           Array("{\"format\": 1, \"id\": 7}".utf8)].enumerated() {
            let path = "\(dir.path)/manifest-\(i).json"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            assertCrsnapError(.failed, containing: [path, "does not parse"], try JSON.read(Manifest.self, from: path))
        }
    }

    func testMissingManifestFileIsASystemError() throws {
        let dir = try TempDir()
        XCTAssertThrowsError(try JSON.read(Manifest.self, from: "\(dir.path)/nope.json")) { error in
            XCTAssertEqual((error as? SystemError)?.errno, ENOENT, "\(error)")
        }
    }
}
