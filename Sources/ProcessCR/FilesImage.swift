import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// CRIU's files.img, read and rewritten at the protobuf wire level: two u32
/// magics, then entries, each a little-endian u32 length and a FileEntry
/// message. Only what crsnap changes is interpreted:
///
///   FileEntry:    1 type (1 = REG), 2 id, 3 reg (RegFileEntry)
///   RegFileEntry: 6 name, 7 mnt_id, 9 ext
///
/// Every other field is copied through byte for byte.
public enum FilesImage {
    public struct Malformed: Error, CustomStringConvertible {
        public let path: String
        public let why: String
        public var description: String { "\(path): not a CRIU files image: \(why)" }
    }

    /// One field of a message: its number and the bytes of the whole field
    /// (tag included) and of its value (for length-delimited fields, the
    /// payload without its length).
    struct Field {
        var number: UInt64
        var wireType: UInt8
        var whole: Range<Int>
        var value: Range<Int>
    }

    static func varint(_ b: [UInt8], _ i: inout Int) -> UInt64? {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        while i < b.count, shift < 64 {
            let byte = b[i]
            i += 1
            v |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 { return v }
            shift += 7
        }
        return nil
    }

    static func encodeVarint(_ v: UInt64) -> [UInt8] {
        var v = v
        var out: [UInt8] = []
        repeat {
            var byte = UInt8(v & 0x7f)
            v >>= 7
            if v != 0 { byte |= 0x80 }
            out.append(byte)
        } while v != 0
        return out
    }

    static func fields(_ b: [UInt8], _ range: Range<Int>) -> [Field]? {
        var out: [Field] = []
        var i = range.lowerBound
        let end = range.upperBound
        while i < end {
            let start = i
            guard let tag = varint(b, &i) else { return nil }
            let wire = UInt8(tag & 7)
            let valueStart: Int
            switch wire {
            case 0:
                valueStart = i
                guard varint(b, &i) != nil else { return nil }
            case 1:
                valueStart = i
                i += 8
            case 2:
                guard let n = varint(b, &i), n <= UInt64(end - i) else { return nil }
                valueStart = i
                i += Int(n)
            case 5:
                valueStart = i
                i += 4
            default:
                return nil
            }
            guard i <= end else { return nil }
            out.append(Field(number: tag >> 3, wireType: wire, whole: start..<i, value: valueStart..<i))
        }
        return out
    }

    static func lengthDelimited(_ number: UInt64, _ payload: [UInt8]) -> [UInt8] {
        encodeVarint(number << 3 | 2) + encodeVarint(UInt64(payload.count)) + payload
    }

    /// Rewrites the regular-file entries CRIU recorded as external files (by
    /// the key they were declared with) into plain files at the given
    /// absolute paths, with no mount id: CRIU then opens each by path from
    /// the root of the restored mount namespace. Returns the keys rewritten.
    @discardableResult
    public static func relocateExternal(in imagesDir: String, to paths: [String: String]) throws -> Set<String> {
        let path = "\(imagesDir)/files.img"
        guard !paths.isEmpty else { return [] }
        let b = try Sys.readFile(path)
        guard b.count >= 8 else { throw Malformed(path: path, why: "shorter than its magic") }
        var out = Array(b[0..<8])
        var done: Set<String> = []
        var i = 8
        while i < b.count {
            guard i + 4 <= b.count else { throw Malformed(path: path, why: "truncated entry length at \(i)") }
            let n = Int(UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24)
            let entry = (i + 4)..<(i + 4 + n)
            guard entry.upperBound <= b.count, let fe = fields(b, entry) else {
                throw Malformed(path: path, why: "entry at \(i) does not parse")
            }
            i = entry.upperBound
            var rewritten: [UInt8]?
            if let reg = fe.first(where: { $0.number == 3 && $0.wireType == 2 }), let rf = fields(b, reg.value),
               rf.contains(where: { $0.number == 9 && $0.wireType == 0 && b[$0.value.lowerBound] != 0 }),
               let name = rf.first(where: { $0.number == 6 && $0.wireType == 2 }),
               case let key = String(decoding: b[name.value], as: UTF8.self), let target = paths[key] {
                var reg2: [UInt8] = []
                for f in rf where f.number != 6 && f.number != 7 && f.number != 9 { reg2 += b[f.whole] }
                reg2 += lengthDelimited(6, Array(target.utf8))
                var entry2: [UInt8] = []
                for f in fe where f.number != 3 { entry2 += b[f.whole] }
                entry2 += lengthDelimited(3, reg2)
                rewritten = entry2
                done.insert(key)
            }
            let bytes = rewritten ?? Array(b[entry])
            let len = UInt32(bytes.count)
            out += [UInt8(len & 0xff), UInt8(len >> 8 & 0xff), UInt8(len >> 16 & 0xff), UInt8(len >> 24)]
            out += bytes
        }
        if !done.isEmpty { try Sys.writeAtomically(path, out) }
        return done
    }
}
