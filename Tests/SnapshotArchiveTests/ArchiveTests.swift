import Foundation
import SnapshotArchive
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Bytes in memory as a sink and a source, for the archive layer's tests.
final class MemorySink: ByteSink {
    var data: [UInt8] = []
    var finished = false
    func write(_ bytes: UnsafeRawBufferPointer) throws { data += bytes }
    func finish() throws { finished = true }
}

final class MemorySource: ByteSource {
    let data: [UInt8]
    var at = 0
    /// At most this many bytes per read: streams come in pieces.
    let piece: Int
    init(_ data: [UInt8], piece: Int = 7919) {
        self.data = data
        self.piece = piece
    }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(buffer.count, data.count - at, piece)
        data[at..<(at + n)].withUnsafeBytes { buffer.copyMemory(from: $0) }
        at += n
        return n
    }
}

/// Runs argv (no shell) in `dir`: its status and what it printed.
func runIn(_ dir: String, _ argv: [String]) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: argv[0])
    p.arguments = Array(argv.dropFirst())
    p.currentDirectoryURL = URL(fileURLWithPath: dir)
    let out = Pipe()
    p.standardOutput = out
    p.standardError = out
    try p.run()
    let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    return (p.terminationStatus, text)
}

final class ArchiveTests: XCTestCase {
    func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
    }

    /// name → content of every entry, after the whole archive was checked.
    func readAll(_ archive: [UInt8]) throws -> [String: [UInt8]] {
        let (source, _) = try Archive.open(MemorySource(archive))
        let reader = ArchiveReader(source)
        var out: [String: [UInt8]] = [:]
        while let h = try reader.next() {
            var content: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = try buf.withUnsafeMutableBytes { try reader.read(into: $0) }
                if n == 0 { break }
                content += buf[..<n]
            }
            XCTAssertEqual(UInt64(content.count), h.size, h.name)
            out[h.name] = content
        }
        return out
    }

    func write(compress: Bool, _ body: (ArchiveWriter) throws -> Void) throws -> [UInt8] {
        let sink = MemorySink()
        let writer = ArchiveWriter(compress ? try ZstdSink(sink) : sink)
        try body(writer)
        try writer.finish()
        XCTAssertTrue(sink.finished)
        return sink.data
    }

    func testRoundTripPlainAndCompressedWithChunksAndLongNames() throws {
        let longName = "unlinked/" + String(repeating: "x", count: 150)
        let stream = pattern(Archive.chunkSize * 2 + 12345, seed: 3)
        for compress in [false, true] {
            let bytes = try write(compress: compress) { w in
                try w.add(name: "manifest.json", data: Array("{\"a\":1}".utf8))
                try w.add(name: longName, data: pattern(1000, seed: 1))
                try w.add(name: "empty", data: [])
                let r = try w.add(stream: "fs.btrfs", from: MemorySource(stream, piece: 100_003))
                XCTAssertEqual(r.bytes, UInt64(stream.count))
                XCTAssertEqual(r.chunks, 3)
            }
            XCTAssertEqual(Array(bytes.prefix(4)) == ZstdSink.magic, compress)
            let entries = try readAll(bytes)
            XCTAssertEqual(entries["manifest.json"], Array("{\"a\":1}".utf8))
            XCTAssertEqual(entries[longName], pattern(1000, seed: 1))
            XCTAssertEqual(entries["empty"], [])
            let chunks = entries.keys.compactMap(Archive.parseChunk).filter { $0.base == "fs.btrfs" }.sorted { $0.index < $1.index }
            XCTAssertEqual(chunks.map(\.index), [0, 1, 2])
            XCTAssertEqual(chunks.flatMap { entries[Archive.chunkName($0.base, $0.index)]! }, stream)
        }
    }

    func testAChangedByteIsNamed() throws {
        let bytes = try write(compress: false) { w in
            try w.add(name: "images/pages-1.img", data: pattern(5000, seed: 9))
            try w.add(name: "manifest.json", data: Array("{}".utf8))
        }
        // The content of the first entry starts after its 512-byte header.
        var damaged = bytes
        damaged[512 + 4000] ^= 0x01
        XCTAssertThrowsError(try readAll(damaged)) { e in
            XCTAssertTrue("\(e)".contains("images/pages-1.img does not match its checksum"), "\(e)")
        }
        // A header changed: its own checksum fails.
        var header = bytes
        header[130] = UInt8(ascii: "7")
        XCTAssertThrowsError(try readAll(header)) { e in XCTAssertTrue("\(e)".contains("fails its checksum"), "\(e)") }
    }

    func testCutShortAndMissingSumsAreErrors() throws {
        let bytes = try write(compress: false) { w in try w.add(name: "a", data: pattern(3000, seed: 2)) }
        for cut in [100, 512 + 1000, bytes.count - 1024 - 512] {
            XCTAssertThrowsError(try readAll(Array(bytes.prefix(cut))), "cut at \(cut)") { e in
                XCTAssertTrue("\(e)".contains("cut short"), "cut at \(cut): \(e)")
            }
        }
        let compressed = try write(compress: true) { w in try w.add(name: "a", data: pattern(300_000, seed: 2)) }
        XCTAssertThrowsError(try readAll(Array(compressed.prefix(compressed.count / 2)))) { e in
            XCTAssertTrue("\(e)".contains("cut short"), "\(e)")
        }
        XCTAssertThrowsError(try readAll(Array(repeating: 0x41, count: 2048))) { e in
            XCTAssertTrue("\(e)".contains("checksum") || "\(e)".contains("not a"), "\(e)")
        }
    }

    /// GNU tar reads what we write, and `sha256sum -c` accepts SHA256SUMS
    /// (the formats are the standard ones, not look-alikes).
    func testGNUTarAndSha256sumReadIt() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/tar"),
              FileManager.default.isExecutableFile(atPath: "/usr/bin/sha256sum") else { throw XCTSkip("no tar or sha256sum") }
        let longName = "images/" + String(repeating: "y", count: 120) + ".img"
        let bytes = try write(compress: false) { w in
            try w.add(name: "manifest.json", data: Array("{}".utf8))
            try w.add(name: longName, data: pattern(70_000, seed: 5))
            try w.add(stream: "fs.btrfs", from: MemorySource(pattern(10, seed: 1)))
        }
        let dir = NSTemporaryDirectory() + "archive-test-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(bytes).write(to: URL(fileURLWithPath: "\(dir)/a.tar"))
        func run(_ argv: [String]) throws -> (Int32, String) { try runIn(dir, argv) }
        let (listed, names) = try run(["/usr/bin/tar", "tf", "a.tar"])
        XCTAssertEqual(listed, 0, names)
        XCTAssertEqual(names.split(separator: "\n").map(String.init), ["manifest.json", longName, "fs.btrfs.000000", "SHA256SUMS"])
        XCTAssertEqual(try run(["/usr/bin/tar", "xf", "a.tar"]).0, 0)
        let (ok, said) = try run(["/usr/bin/sha256sum", "-c", "SHA256SUMS"])
        XCTAssertEqual(ok, 0, said)
    }

    func testMeterLineAndItsTerminalRule() {
        XCTAssertEqual(TransferMeter.line("sending web@5", bytes: 3 << 20, seconds: 2), "sending web@5: 3.0 MiB, 1.5 MiB/s")
        XCTAssertEqual(TransferMeter.line("x", bytes: 100, seconds: 0), "x: 100 B, 0 B/s")
        if isatty(2) == 0 { XCTAssertNil(TransferMeter("x"), "no meter when stderr is not a terminal") }
        // A sink tells its meter the bytes so far.
        var seen: [UInt64] = []
        let sink = FileSink(fd: open("/dev/null", O_WRONLY), name: "null")
        defer { close(sink.fd) }
        sink.onProgress = { seen.append($0) }
        XCTAssertNoThrow(try sink.write([1, 2, 3]))
        XCTAssertNoThrow(try sink.write([4]))
        XCTAssertEqual(seen, [3, 4])
    }
}
