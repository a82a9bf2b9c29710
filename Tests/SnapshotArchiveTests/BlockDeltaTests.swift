import Foundation
import SnapshotArchive
import XCTest

/// A file as the blocks where it differs from a base: planned size is
/// written size, applying it to the base gives the file back, and a delta
/// meets only its own base.
final class BlockDeltaTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "delta-test-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func file(_ name: String, _ bytes: [UInt8]) throws -> String {
        let path = "\(dir)/\(name)"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    func sha(_ bytes: [UInt8]) throws -> String {
        let h = SHA256()
        try bytes.withUnsafeBytes { try h.update($0) }
        return try h.hex()
    }

    func testOnlyChangedBlocksTravelAndTheFileComesBack() throws {
        let bs = BlockDelta.blockSize
        let base = (0..<(10 * bs + 100)).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        var target = base
        target[3 * bs + 7] ^= 0xff           // block 3
        target[9 * bs] ^= 0x01               // block 9
        target += [UInt8](repeating: 0x5a, count: bs)  // grows: block 10 changes, block 11 is new and short
        let basePath = try file("base", base), targetPath = try file("target", target)

        let plan = try BlockDelta.plan(target: targetPath, base: basePath)
        XCTAssertEqual(plan.size, UInt64(target.count))
        XCTAssertEqual(plan.changedBlocks, 4, "blocks 3, 9, 10 (longer now) and 11 (new)")
        let sink = MemorySink()
        try BlockDelta.write(plan, target: targetPath, baseSHA256: try sha(base), into: sink)
        XCTAssertEqual(UInt64(sink.data.count), plan.encodedSize, "written as planned")
        XCTAssertLessThan(sink.data.count, target.count / 2)

        let out = MemorySink()
        let size = try BlockDelta.apply(from: MemorySource(sink.data), base: basePath, expectBaseSHA256: try sha(base), into: out)
        XCTAssertEqual(size, UInt64(target.count))
        XCTAssertEqual(out.data, target, "base + delta = the file")

        // Another base than the one it was made against: refused by hash.
        XCTAssertThrowsError(try BlockDelta.apply(from: MemorySource(sink.data), base: basePath,
                                                  expectBaseSHA256: try sha(target), into: MemorySink())) {
            XCTAssertTrue("\($0)".contains("base differs"), "\($0)")
        }
        // A base too short for the blocks it should give.
        let short = try file("short", Array(base.prefix(2 * bs)))
        XCTAssertThrowsError(try BlockDelta.apply(from: MemorySource(sink.data), base: short, expectBaseSHA256: nil, into: MemorySink())) {
            XCTAssertTrue("\($0)".contains("shorter"), "\($0)")
        }
        // Cut short.
        XCTAssertThrowsError(try BlockDelta.apply(from: MemorySource(Array(sink.data.dropLast(10))), base: basePath,
                                                  expectBaseSHA256: nil, into: MemorySink())) {
            XCTAssertTrue("\($0)".contains("cut short"), "\($0)")
        }
    }
}
