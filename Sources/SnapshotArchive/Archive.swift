import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A tar stream whose every entry is checksummed: SHA256SUMS, the last
/// entry, holds the SHA-256 of each one before it in `sha256sum` format (so
/// `tar xf` + `sha256sum -c SHA256SUMS` checks an unpacked archive by hand).
/// Streams of unknown length (a btrfs send stream) are cut into numbered
/// chunks, NAME.000000, NAME.000001, ..., whose concatenation is the stream.
public enum Archive {
    public static let checksumsName = "SHA256SUMS"
    /// Bytes of a stream per chunk: held in memory while its header, which
    /// needs its size, is written.
    public static let chunkSize = 8 << 20

    public static func chunkName(_ base: String, _ index: Int) -> String {
        base + "." + String(repeating: "0", count: max(0, 6 - String(index).count)) + String(index)
    }

    /// (base, index) of a chunk's name, nil for another name.
    public static func parseChunk(_ name: String) -> (base: String, index: Int)? {
        guard let dot = name.lastIndex(of: ".") else { return nil }
        let digits = name[name.index(after: dot)...]
        guard digits.count == 6, digits.allSatisfy({ $0 >= "0" && $0 <= "9" }), let i = Int(digits) else { return nil }
        return (String(name[..<dot]), i)
    }

    /// A source that is one whole archive: zstd-compressed or plain, told
    /// apart by the first bytes.
    public static func open(_ source: ByteSource) throws -> (source: ByteSource, compressed: Bool) {
        let peek = PeekableSource(source)
        if try peek.peek(4) == ZstdSink.magic { return (try ZstdSource(peek), true) }
        return (peek, false)
    }
}

/// Writes a checksummed archive (see `Archive`).
public final class ArchiveWriter {
    let tar: TarWriter
    var sums: [(name: String, hex: String)] = []
    let mtime = UInt64(Date().timeIntervalSince1970)

    public init(_ sink: ByteSink) { tar = TarWriter(sink) }

    /// Bytes of the (uncompressed) archive written so far.
    public var bytes: UInt64 { tar.bytes }

    public func add(name: String, data: [UInt8], mode: UInt32 = 0o600) throws {
        let hash = SHA256()
        try tar.add(Tar.Header(name: name, size: UInt64(data.count), mode: mode, mtime: mtime),
                    content: { try $0.withUnsafeBytes { try hash.update($0) } }, data: data)
        sums.append((name, try hash.hex()))
    }

    /// The file at `path` as entry `name`, with its permission bits; its size.
    @discardableResult
    public func add(name: String, file path: String) throws -> UInt64 {
        let hash = SHA256()
        let size = try tar.add(name: name, file: path, mtime: mtime) { try $0.withUnsafeBytes { try hash.update($0) } }
        sums.append((name, try hash.hex()))
        return size
    }

    /// An entry of `size` bytes that `body` writes into the sink it is given.
    public func add(name: String, size: UInt64, mode: UInt32 = 0o600, writing body: (ByteSink) throws -> Void) throws {
        let hash = SHA256()
        try tar.add(Tar.Header(name: name, size: size, mode: mode, mtime: mtime)) { inner in
            try body(HashingSink(inner, hash))
        }
        sums.append((name, try hash.hex()))
    }

    /// Everything `source` gives, as chunks NAME.000000, ...; the bytes and
    /// the number of chunks (at least one, empty for an empty stream).
    @discardableResult
    public func add(stream base: String, from source: ByteSource) throws -> (bytes: UInt64, chunks: Int) {
        var total: UInt64 = 0
        var index = 0
        var buf = [UInt8](repeating: 0, count: Archive.chunkSize)
        while true {
            let n = try buf.withUnsafeMutableBytes { try source.readFully(into: $0) }
            if n > 0 || index == 0 {
                try add(name: Archive.chunkName(base, index), data: n == buf.count ? buf : Array(buf[..<n]))
                index += 1
                total += UInt64(n)
            }
            if n < buf.count { return (total, index) }
        }
    }

    /// SHA256SUMS, then the end of the archive.
    public func finish() throws {
        let text = sums.map { "\($0.hex)  \($0.name)\n" }.joined()
        try tar.add(Tar.Header(name: Archive.checksumsName, size: UInt64(text.utf8.count), mode: 0o644, mtime: mtime),
                    data: Array(text.utf8))
        try tar.finish()
    }
}

/// Reads a checksummed archive entry by entry, hashing each one. Nothing it
/// returns is to be trusted until `next()` has returned nil: that is when
/// SHA256SUMS has been read and every entry checked against it (an entry
/// missing from it, or listed there and missing, is an error too).
public final class ArchiveReader {
    let tar: TarReader
    var hash: SHA256?
    var seen: [(name: String, hex: String)] = []
    var names: Set<String> = []

    public init(_ source: ByteSource) { tar = TarReader(source) }

    /// Offset in the (uncompressed) archive, for messages.
    public var offset: UInt64 { tar.offset }

    /// The next entry; nil once the whole archive was read and checked.
    public func next() throws -> Tar.Header? {
        try endEntry()
        guard let h = try tar.next() else {
            throw ArchiveError("the archive ends without \(Archive.checksumsName): it is cut short, or not a crsnap archive")
        }
        if h.name == Archive.checksumsName {
            let listed = try Self.parseSums(try tar.readAll(limit: 16 << 20))
            try verify(listed)
            guard try tar.next() == nil else {
                throw ArchiveError("the archive goes on after \(Archive.checksumsName) (\(tar.current?.name ?? "?")): not a crsnap archive")
            }
            // The rest is the end's padding: read to the end of the input,
            // so that a compressed archive's last frame is checked too and a
            // pipe is read empty.
            try tar.drain()
            return nil
        }
        guard names.insert(h.name).inserted else { throw ArchiveError("the archive holds \(h.name) twice") }
        hash = SHA256()
        return h
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = try tar.read(into: buffer)
        try hash?.update(UnsafeRawBufferPointer(rebasing: buffer[..<n]))
        return n
    }

    /// The current entry's content (a small one: JSON).
    public func readAll(limit: Int = 64 << 20) throws -> [UInt8] {
        guard let h = tar.current else { return [] }
        guard h.size <= UInt64(limit) else { throw ArchiveError("\(h.name) is \(h.size) bytes; at most \(limit) expected") }
        var out = [UInt8](repeating: 0, count: Int(h.size))
        _ = try out.withUnsafeMutableBytes { try readFully(into: $0) }
        return out
    }

    /// The current entry as a source, e.g. to copy it into a file.
    public var entry: ByteSource { EntrySource(self) }

    final class EntrySource: ByteSource {
        let reader: ArchiveReader
        init(_ reader: ArchiveReader) { self.reader = reader }
        func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int { try reader.read(into: buffer) }
    }

    func endEntry() throws {
        guard let hash, let h = tar.current else { return }
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while try buf.withUnsafeMutableBytes({ try read(into: $0) }) > 0 {}
        seen.append((h.name, try hash.hex()))
        self.hash = nil
    }

    func verify(_ listed: [String: String]) throws {
        for (name, hex) in seen {
            guard let expected = listed[name] else {
                throw ArchiveError("\(name) is not listed in \(Archive.checksumsName): the archive was changed")
            }
            guard expected == hex else {
                throw ArchiveError("\(name) does not match its checksum in \(Archive.checksumsName): the archive is damaged or was changed")
            }
        }
        if let missing = listed.keys.sorted().first(where: { !names.contains($0) }) {
            throw ArchiveError("\(missing), listed in \(Archive.checksumsName), is not in the archive")
        }
    }

    static func parseSums(_ bytes: [UInt8]) throws -> [String: String] {
        var out: [String: String] = [:]
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, parts[0].count == 64, parts[0].allSatisfy(\.isHexDigit), parts[1].hasPrefix(" ") else {
                throw ArchiveError("\(Archive.checksumsName) has a malformed line: \(line.prefix(100))")
            }
            out[String(parts[1].dropFirst())] = String(parts[0]).lowercased()
        }
        return out
    }
}

extension ArchiveReader: ByteSource {}

/// Passes bytes on to another sink, hashing them on the way.
public final class HashingSink: ByteSink {
    let next: ByteSink
    public let hash: SHA256

    public init(_ next: ByteSink, _ hash: SHA256 = SHA256()) {
        self.next = next
        self.hash = hash
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try hash.update(bytes)
        try next.write(bytes)
    }

    public func finish() throws { try next.finish() }
}
