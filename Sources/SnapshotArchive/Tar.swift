import Foundation

/// The POSIX tar format (ustar, with pax extended headers for long names and
/// large sizes), regular files only: what `tar tf` lists and `tar xf`
/// unpacks. crsnap's archives are tar streams so that a person can look
/// into one with the tools they have.
public enum Tar {
    public static let block = 512

    /// A regular file's header, and how many bytes of content follow it.
    public struct Header: Equatable, Sendable {
        public var name: String
        public var size: UInt64
        public var mode: UInt32
        public var mtime: UInt64

        public init(name: String, size: UInt64, mode: UInt32 = 0o600, mtime: UInt64 = 0) {
            self.name = name
            self.size = size
            self.mode = mode
            self.mtime = mtime
        }
    }

    /// The blocks that introduce `h`: a pax header first when the name or
    /// the size does not fit the ustar fields.
    static func encode(_ h: Header) -> [UInt8] {
        var records: [(String, String)] = []
        let nameBytes = Array(h.name.utf8)
        if nameBytes.count > 100 { records.append(("path", h.name)) }
        if h.size > 0o77777777777 { records.append(("size", String(h.size))) }
        var out: [UInt8] = []
        if !records.isEmpty {
            var body: [UInt8] = []
            for (k, v) in records { body += paxRecord(k, v) }
            out += ustar(name: "PaxHeaders/\(String(decoding: nameBytes.prefix(80), as: UTF8.self))",
                         size: UInt64(body.count), mode: 0o644, mtime: h.mtime, type: UInt8(ascii: "x"))
            out += body + padding(UInt64(body.count))
        }
        out += ustar(name: String(decoding: nameBytes.prefix(100), as: UTF8.self), size: min(h.size, 0o77777777777),
                     mode: h.mode, mtime: h.mtime, type: UInt8(ascii: "0"))
        return out
    }

    /// "LEN key=value\n", LEN counting itself.
    static func paxRecord(_ key: String, _ value: String) -> [UInt8] {
        let rest = " \(key)=\(value)\n".utf8.count
        var len = rest + 1
        while String(len).count + rest != len { len += 1 }
        return Array("\(len) \(key)=\(value)\n".utf8)
    }

    static func ustar(name: String, size: UInt64, mode: UInt32, mtime: UInt64, type: UInt8) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: block)
        func put(_ bytes: [UInt8], at offset: Int, width: Int) {
            for (i, c) in bytes.prefix(width).enumerated() { b[offset + i] = c }
        }
        func octal(_ v: UInt64, at offset: Int, width: Int) {
            let digits = String(v, radix: 8)
            put(Array((String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits).utf8), at: offset, width: width - 1)
        }
        put(Array(name.utf8), at: 0, width: 100)
        octal(UInt64(mode), at: 100, width: 8)
        octal(0, at: 108, width: 8)
        octal(0, at: 116, width: 8)
        octal(size, at: 124, width: 12)
        octal(mtime, at: 136, width: 12)
        b[156] = type
        put(Array("ustar\0".utf8), at: 257, width: 6)
        put(Array("00".utf8), at: 263, width: 2)
        put(Array("root".utf8), at: 265, width: 32)
        put(Array("root".utf8), at: 297, width: 32)
        for i in 148..<156 { b[i] = 0x20 }
        let sum = b.reduce(0) { $0 + Int($1) }
        put(Array((String(repeating: "0", count: 6 - String(sum, radix: 8).count) + String(sum, radix: 8)).utf8), at: 148, width: 6)
        b[154] = 0
        b[155] = 0x20
        return b
    }

    static func padding(_ size: UInt64) -> [UInt8] {
        let rest = Int(size % UInt64(block))
        return rest == 0 ? [] : [UInt8](repeating: 0, count: block - rest)
    }
}

/// Writes a tar stream into a sink, entry after entry.
public final class TarWriter {
    let sink: ByteSink
    public private(set) var bytes: UInt64 = 0

    public init(_ sink: ByteSink) { self.sink = sink }

    func emit(_ b: [UInt8]) throws {
        try sink.write(b)
        bytes += UInt64(b.count)
    }

    /// An entry whose content is exactly `header.size` bytes from `body`,
    /// which is called with each piece to write (it may hash them too).
    public func add(_ header: Tar.Header, content: ([UInt8]) throws -> Void = { _ in },
                    from source: ByteSource? = nil, data: [UInt8]? = nil) throws {
        try emit(Tar.encode(header))
        if let data {
            guard UInt64(data.count) == header.size else { throw ArchiveError("\(header.name): \(data.count) bytes, header says \(header.size)") }
            try content(data)
            try emit(data)
        } else if let source {
            var left = header.size
            var buf = [UInt8](repeating: 0, count: 1 << 20)
            while left > 0 {
                let want = Int(min(UInt64(buf.count), left))
                let n = try buf.withUnsafeMutableBytes { try source.readFully(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<want])) }
                guard n == want else { throw ArchiveError("\(header.name) ended early: \(header.size - left + UInt64(n)) of \(header.size) bytes") }
                let piece = n == buf.count ? buf : Array(buf[..<n])
                try content(piece)
                try emit(piece)
                left -= UInt64(n)
            }
        }
        try emit(Tar.padding(header.size))
    }

    /// The end of the archive: two zero blocks.
    public func finish() throws {
        try emit([UInt8](repeating: 0, count: 2 * Tar.block))
        try sink.finish()
    }
}

/// Reads a tar stream entry by entry: `next()` for the header, then
/// `read(into:)` for its content (what is left unread is skipped).
/// Accepts regular files only: anything else is not one of crsnap's archives.
public final class TarReader {
    let source: ByteSource
    var left: UInt64 = 0
    var pad = 0
    public private(set) var current: Tar.Header?
    /// Offset of the next byte in the tar stream, for error messages.
    public private(set) var offset: UInt64 = 0

    public init(_ source: ByteSource) { self.source = source }

    func exact(_ count: Int, _ what: String) throws -> [UInt8] {
        var b = [UInt8](repeating: 0, count: count)
        let n = try b.withUnsafeMutableBytes { try source.readFully(into: $0) }
        offset += UInt64(n)
        guard n == count else { throw ArchiveError("the archive ends in the middle of \(what) (at byte \(offset)): it is cut short") }
        return b
    }

    /// The next entry, or nil at the end of the archive.
    public func next() throws -> Tar.Header? {
        if let current { try skip(current) }
        current = nil
        var pax: [String: String] = [:]
        while true {
            let at = offset
            let b = try exact(Tar.block, "a header")
            if b.allSatisfy({ $0 == 0 }) { return nil }
            try checkSum(b, at: at)
            func field(_ o: Int, _ w: Int) -> String {
                String(decoding: b[o..<(o + w)].prefix { $0 != 0 }, as: UTF8.self)
            }
            func number(_ o: Int, _ w: Int) throws -> UInt64 {
                let s = field(o, w).trimmingCharacters(in: .whitespaces)
                guard let v = s.isEmpty ? 0 : UInt64(s, radix: 8) else { throw ArchiveError("the header at byte \(at) has a bad number \"\(s)\": not a crsnap archive, or damaged") }
                return v
            }
            guard field(257, 5) == "ustar" else { throw ArchiveError("the header at byte \(at) is not a ustar header: not a crsnap archive, or damaged") }
            let type = b[156]
            var size = try number(124, 12)
            if type == UInt8(ascii: "x") || type == UInt8(ascii: "g") {
                guard size <= 1 << 20 else { throw ArchiveError("the pax header at byte \(at) is too large (\(size) bytes)") }
                let body = try exact(Int(size), "a pax header")
                _ = try exact(Tar.padding(size).count, "a pax header")
                if type == UInt8(ascii: "x") { pax.merge(try Self.parsePax(body, at: at)) { $1 } }
                continue
            }
            guard type == UInt8(ascii: "0") || type == 0 else {
                throw ArchiveError("the entry at byte \(at) (\(field(0, 100))) is of type '\(Character(UnicodeScalar(type)))', not a regular file: not a crsnap archive")
            }
            var name = field(0, 100)
            let prefix = field(345, 155)
            if !prefix.isEmpty { name = prefix + "/" + name }
            if let p = pax["path"] { name = p }
            if let s = pax["size"] {
                guard let v = UInt64(s) else { throw ArchiveError("the pax size \"\(s)\" at byte \(at) is not a number") }
                size = v
            }
            let h = Tar.Header(name: name, size: size, mode: UInt32(try number(100, 8) & 0o7777), mtime: try number(136, 12))
            current = h
            left = size
            pad = Tar.padding(size).count
            return h
        }
    }

    /// Reads what follows the end of the archive until the input ends;
    /// anything but zeros there is an error.
    public func drain() throws {
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = try buf.withUnsafeMutableBytes { try source.read(into: $0) }
            if n == 0 { return }
            guard buf[..<n].allSatisfy({ $0 == 0 }) else {
                throw ArchiveError("the archive goes on after its end (at byte \(offset)): not a crsnap archive, or two of them")
            }
            offset += UInt64(n)
        }
    }

    /// Content of the current entry; 0 at its end.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard let current, left > 0 else { return 0 }
        let want = Int(min(UInt64(buffer.count), left))
        let n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<want]))
        guard n > 0 else { throw ArchiveError("the archive ends in the middle of \(current.name) (at byte \(offset)): it is cut short") }
        left -= UInt64(n)
        offset += UInt64(n)
        return n
    }

    /// All of the current entry's content (for small entries).
    public func readAll(limit: Int = 64 << 20) throws -> [UInt8] {
        guard let current else { return [] }
        guard current.size <= UInt64(limit) else { throw ArchiveError("\(current.name) is \(current.size) bytes; at most \(limit) expected") }
        var out = [UInt8](repeating: 0, count: Int(left))
        var done = 0
        while done < out.count {
            done += try out.withUnsafeMutableBytes { try read(into: UnsafeMutableRawBufferPointer(rebasing: $0[done...])) }
        }
        return out
    }

    func skip(_ h: Tar.Header) throws {
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while left > 0 {
            _ = try buf.withUnsafeMutableBytes { try read(into: $0) }
        }
        _ = try exact(pad, "the padding of \(h.name)")
        pad = 0
    }

    func checkSum(_ b: [UInt8], at: UInt64) throws {
        var sum = 0
        for (i, c) in b.enumerated() { sum += (148..<156).contains(i) ? 0x20 : Int(c) }
        let recorded = String(decoding: b[148..<156].prefix { $0 != 0 && $0 != 0x20 }, as: UTF8.self)
        guard Int(recorded, radix: 8) == sum else {
            throw ArchiveError("the header at byte \(at) fails its checksum: the archive is damaged (or not a tar archive)")
        }
    }

    static func parsePax(_ body: [UInt8], at: UInt64) throws -> [String: String] {
        var out: [String: String] = [:]
        var i = 0
        while i < body.count {
            guard let space = body[i...].firstIndex(of: 0x20), let len = Int(String(decoding: body[i..<space], as: UTF8.self)),
                  len > 0, i + len <= body.count, body[i + len - 1] == 0x0A,
                  let eq = body[(space + 1)..<(i + len)].firstIndex(of: UInt8(ascii: "=")) else {
                throw ArchiveError("the pax header at byte \(at) is malformed")
            }
            out[String(decoding: body[(space + 1)..<eq], as: UTF8.self)] = String(decoding: body[(eq + 1)..<(i + len - 1)], as: UTF8.self)
            i += len
        }
        return out
    }
}
