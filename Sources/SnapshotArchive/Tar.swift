import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The POSIX tar format (ustar, with pax extended headers for long names,
/// link targets, large sizes and ids): what `tar tf` lists and `tar xf`
/// unpacks. crsnap's archives are tar streams of regular files so that a
/// person can look into one with the tools they have; a tar of a directory
/// tree (`DirectoryTar`) also holds directories, links, devices and fifos.
public enum Tar {
    public static let block = 512
    /// The zero blocks at the end of an archive.
    public static let endBytes = 2 * block

    /// An entry's header, and how many bytes of content follow it (only a
    /// regular file has content).
    public struct Header: Equatable, Sendable {
        public enum Kind: Equatable, Sendable {
            case file
            case directory
            case symlink(to: String)
            /// Another name of a file earlier in the archive.
            case hardlink(to: String)
            case characterDevice(major: UInt32, minor: UInt32)
            case blockDevice(major: UInt32, minor: UInt32)
            case fifo

            /// The ustar typeflag.
            var flag: UInt8 {
                switch self {
                case .file: return UInt8(ascii: "0")
                case .hardlink: return UInt8(ascii: "1")
                case .symlink: return UInt8(ascii: "2")
                case .characterDevice: return UInt8(ascii: "3")
                case .blockDevice: return UInt8(ascii: "4")
                case .directory: return UInt8(ascii: "5")
                case .fifo: return UInt8(ascii: "6")
                }
            }

            var link: String? {
                switch self {
                case .symlink(let to), .hardlink(let to): return to
                default: return nil
                }
            }

            var device: (UInt32, UInt32)? {
                switch self {
                case .characterDevice(let a, let b), .blockDevice(let a, let b): return (a, b)
                default: return nil
                }
            }
        }

        public var name: String
        public var size: UInt64
        public var mode: UInt32
        public var mtime: UInt64
        public var kind: Kind
        public var uid: UInt32
        public var gid: UInt32
        /// Extended attributes, by name (pax "SCHILY.xattr." records, as GNU
        /// tar's --xattrs writes and reads them).
        public var xattrs: [String: [UInt8]]

        public init(name: String, size: UInt64, mode: UInt32 = 0o600, mtime: UInt64 = 0, kind: Kind = .file,
                    uid: UInt32 = 0, gid: UInt32 = 0, xattrs: [String: [UInt8]] = [:]) {
            self.name = name
            self.size = size
            self.mode = mode
            self.mtime = mtime
            self.kind = kind
            self.uid = uid
            self.gid = gid
            self.xattrs = xattrs
        }
    }

    /// The largest value of an 8-byte octal field (uid, gid, mode).
    static let smallMax: UInt64 = 0o7777777
    /// The prefix of a pax record that holds an extended attribute.
    static let xattrKey = "SCHILY.xattr."

    /// The blocks that introduce `h`: a pax header first when the name, the
    /// link target, the size or an id does not fit the ustar fields.
    static func encode(_ h: Header) -> [UInt8] {
        var records: [(String, [UInt8])] = []
        let nameBytes = Array(h.name.utf8)
        let linkBytes = Array((h.kind.link ?? "").utf8)
        if nameBytes.count > 100 { records.append(("path", nameBytes)) }
        if linkBytes.count > 100 { records.append(("linkpath", linkBytes)) }
        if h.size > 0o77777777777 { records.append(("size", Array(String(h.size).utf8))) }
        if UInt64(h.uid) > smallMax { records.append(("uid", Array(String(h.uid).utf8))) }
        if UInt64(h.gid) > smallMax { records.append(("gid", Array(String(h.gid).utf8))) }
        for (name, value) in h.xattrs.sorted(by: { $0.key < $1.key }) { records.append((xattrKey + name, value)) }
        var out: [UInt8] = []
        if !records.isEmpty {
            var body: [UInt8] = []
            for (k, v) in records { body += paxRecord(k, v) }
            out += ustar(Header(name: "PaxHeaders/\(String(decoding: nameBytes.prefix(80), as: UTF8.self))",
                                size: UInt64(body.count), mode: 0o644, mtime: h.mtime), type: UInt8(ascii: "x"))
            out += body + padding(UInt64(body.count))
        }
        var fitted = h
        fitted.name = String(decoding: nameBytes.prefix(100), as: UTF8.self)
        fitted.size = min(h.size, 0o77777777777)
        out += ustar(fitted, type: h.kind.flag, link: linkBytes.prefix(100))
        return out
    }

    /// "LEN key=value\n", LEN counting itself; the value is bytes (an
    /// extended attribute's need not be text).
    static func paxRecord(_ key: String, _ value: [UInt8]) -> [UInt8] {
        let rest = 1 + key.utf8.count + 1 + value.count + 1
        var len = rest + 1
        while String(len).count + rest != len { len += 1 }
        return Array("\(len) \(key)=".utf8) + value + [0x0A]
    }

    static func ustar(_ h: Header, type: UInt8, link: ArraySlice<UInt8> = []) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: block)
        func put<C: Collection>(_ bytes: C, at offset: Int, width: Int) where C.Element == UInt8 {
            for (i, c) in bytes.prefix(width).enumerated() { b[offset + i] = c }
        }
        func octal(_ v: UInt64, at offset: Int, width: Int) {
            let digits = String(v, radix: 8)
            put(Array((String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits).utf8), at: offset, width: width - 1)
        }
        put(Array(h.name.utf8), at: 0, width: 100)
        octal(UInt64(h.mode), at: 100, width: 8)
        octal(min(UInt64(h.uid), smallMax), at: 108, width: 8)
        octal(min(UInt64(h.gid), smallMax), at: 116, width: 8)
        octal(h.size, at: 124, width: 12)
        octal(h.mtime, at: 136, width: 12)
        b[156] = type
        put(link, at: 157, width: 100)
        put(Array("ustar\0".utf8), at: 257, width: 6)
        put(Array("00".utf8), at: 263, width: 2)
        // Names only for root: `tar xf` as root prefers a name it can look
        // up over the number, and other ids mean nothing on another host.
        if h.uid == 0 { put(Array("root".utf8), at: 265, width: 32) }
        if h.gid == 0 { put(Array("root".utf8), at: 297, width: 32) }
        if let (major, minor) = h.kind.device {
            octal(UInt64(major), at: 329, width: 8)
            octal(UInt64(minor), at: 337, width: 8)
        }
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
        try b.withUnsafeBytes { try emit($0) }
    }

    func emit(_ b: UnsafeRawBufferPointer) throws {
        try sink.write(b)
        bytes += UInt64(b.count)
    }

    /// An entry whose `header.size` bytes `body` writes into the sink it is
    /// given (another tar stream, say); more or fewer is an error.
    public func add(_ header: Tar.Header, writing body: (ByteSink) throws -> Void) throws {
        try emit(Tar.encode(header))
        let inner = EntrySink(self, name: header.name, size: header.size)
        try body(inner)
        guard inner.written == header.size else {
            throw ArchiveError("\(header.name): \(inner.written) bytes written, its header says \(header.size)")
        }
        try emit(Tar.padding(header.size))
    }

    /// One entry's content, passed on to the writer.
    final class EntrySink: ByteSink {
        let writer: TarWriter
        let name: String
        let size: UInt64
        var written: UInt64 = 0

        init(_ writer: TarWriter, name: String, size: UInt64) {
            (self.writer, self.name, self.size) = (writer, name, size)
        }

        func write(_ bytes: UnsafeRawBufferPointer) throws {
            guard written + UInt64(bytes.count) <= size else {
                throw ArchiveError("\(name): more than the \(size) bytes its header says")
            }
            try writer.emit(bytes)
            written += UInt64(bytes.count)
        }

        func finish() throws {}
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

    /// The regular file at `path` as entry `name`, with its permission bits;
    /// its size. `content` sees each piece written (to hash it).
    @discardableResult
    public func add(name: String, file path: String, mtime: UInt64, content: ([UInt8]) throws -> Void = { _ in }) throws -> UInt64 {
        let fd = try Sys.open(path, O_RDONLY | O_CLOEXEC)
        defer { Sys.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SystemError("stat", path, errno: errno) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw ArchiveError("\(path) is not a regular file") }
        try add(Tar.Header(name: name, size: UInt64(st.st_size), mode: UInt32(st.st_mode & 0o7777), mtime: mtime),
                content: content, from: FileSource(fd: fd, name: path))
        return UInt64(st.st_size)
    }

    /// The end of the archive: two zero blocks; the sink is finished too.
    public func finish() throws {
        try end()
        try sink.finish()
    }

    /// The two zero blocks that end an archive, the sink left open (for a
    /// tar inside another one).
    public func end() throws {
        try emit([UInt8](repeating: 0, count: Tar.endBytes))
    }
}

/// Reads a tar stream entry by entry: `next()` for the header, then
/// `read(into:)` for its content (what is left unread is skipped).
/// By default accepts regular files only: anything else is not one of
/// crsnap's archives. With `tree`, every kind `DirectoryTar` writes.
public final class TarReader: ByteSource {
    let source: ByteSource
    let tree: Bool
    var left: UInt64 = 0
    var pad = 0
    public private(set) var current: Tar.Header?
    /// Offset of the next byte in the tar stream, for error messages.
    public private(set) var offset: UInt64 = 0

    public init(_ source: ByteSource, tree: Bool = false) {
        self.source = source
        self.tree = tree
    }

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
        var pax: [String: [UInt8]] = [:]
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
            func text(_ key: String) -> String? { pax[key].map { String(decoding: $0, as: UTF8.self) } }
            func paxNumber(_ key: String) throws -> UInt64? {
                guard let s = text(key) else { return nil }
                guard let v = UInt64(s) else { throw ArchiveError("the pax \(key) \"\(s)\" at byte \(at) is not a number") }
                return v
            }
            let link = text("linkpath") ?? field(157, 100)
            let kind: Tar.Header.Kind
            switch type {
            case UInt8(ascii: "0"), 0: kind = .file
            case UInt8(ascii: "1") where tree: kind = .hardlink(to: link)
            case UInt8(ascii: "2") where tree: kind = .symlink(to: link)
            case UInt8(ascii: "3") where tree: kind = .characterDevice(major: UInt32(try number(329, 8)), minor: UInt32(try number(337, 8)))
            case UInt8(ascii: "4") where tree: kind = .blockDevice(major: UInt32(try number(329, 8)), minor: UInt32(try number(337, 8)))
            case UInt8(ascii: "5") where tree: kind = .directory
            case UInt8(ascii: "6") where tree: kind = .fifo
            default:
                throw ArchiveError("the entry at byte \(at) (\(field(0, 100))) is of type '\(Character(UnicodeScalar(type)))', "
                                   + (tree ? "which this crsnap does not unpack" : "not a regular file: not a crsnap archive"))
            }
            var name = field(0, 100)
            let prefix = field(345, 155)
            if !prefix.isEmpty { name = prefix + "/" + name }
            if let p = text("path") { name = p }
            if let v = try paxNumber("size") { size = v }
            // Only a regular file has content, as DirectoryTar writes them.
            guard kind == .file || size == 0 else {
                throw ArchiveError("the entry at byte \(at) (\(name)) is not a regular file but says it holds \(size) bytes")
            }
            var h = Tar.Header(name: name, size: size, mode: UInt32(try number(100, 8) & 0o7777), mtime: try number(136, 12), kind: kind)
            if tree {
                h.uid = UInt32(truncatingIfNeeded: try paxNumber("uid") ?? number(108, 8))
                h.gid = UInt32(truncatingIfNeeded: try paxNumber("gid") ?? number(116, 8))
                for (k, v) in pax where k.hasPrefix(Tar.xattrKey) { h.xattrs[String(k.dropFirst(Tar.xattrKey.count))] = v }
            }
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

    static func parsePax(_ body: [UInt8], at: UInt64) throws -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        var i = 0
        while i < body.count {
            guard let space = body[i...].firstIndex(of: 0x20), let len = Int(String(decoding: body[i..<space], as: UTF8.self)),
                  len > 0, i + len <= body.count, body[i + len - 1] == 0x0A,
                  let eq = body[(space + 1)..<(i + len)].firstIndex(of: UInt8(ascii: "=")) else {
                throw ArchiveError("the pax header at byte \(at) is malformed")
            }
            out[String(decoding: body[(space + 1)..<eq], as: UTF8.self)] = Array(body[(eq + 1)..<(i + len - 1)])
            i += len
        }
        return out
    }
}
