import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A CRIU image file as it lies on disk: two little-endian u32 magics, then
/// entries, each a little-endian u32 length and one protobuf message. crsnap
/// reads the few fields it needs at the wire level (`Wire`) rather than
/// carrying CRIU's image schemas; the field numbers are CRIU's (images/*.proto).
public struct CriuImageFile {
    public struct Malformed: Error, CustomStringConvertible {
        public let path: String
        public let why: String
        public var description: String { "\(path): not a CRIU image: \(why)" }
    }

    public let path: String
    public let bytes: [UInt8]
    /// Where each entry's message is in `bytes` (its length prefix excluded).
    public let entries: [Range<Int>]

    public init(path: String) throws {
        try self.init(path: path, bytes: try Sys.readFile(path))
    }

    public init(path: String, bytes b: [UInt8]) throws {
        guard b.count >= 8 else { throw Malformed(path: path, why: "shorter than its magic") }
        var entries: [Range<Int>] = []
        var i = 8
        while i < b.count {
            guard i + 4 <= b.count else { throw Malformed(path: path, why: "truncated entry length at \(i)") }
            let n = Int(Wire.u32(b, i))
            let entry = (i + 4)..<(i + 4 + n)
            guard entry.upperBound <= b.count else { throw Malformed(path: path, why: "entry at \(i) runs past the end") }
            entries.append(entry)
            i = entry.upperBound
        }
        self.path = path
        self.bytes = b
        self.entries = entries
    }

    /// The fields of entry `k`, or a Malformed error naming it.
    public func fields(_ k: Int) throws -> [Wire.Field] {
        guard let f = Wire.fields(bytes, entries[k]) else {
            throw Malformed(path: path, why: "entry \(k) does not parse")
        }
        return f
    }
}

/// The protobuf wire format, as far as crsnap reads and writes it.
public enum Wire {
    /// One field of a message: its number and the bytes of the whole field
    /// (tag included) and of its value (for length-delimited fields, the
    /// payload without its length).
    public struct Field {
        public var number: UInt64
        public var wireType: UInt8
        public var whole: Range<Int>
        public var value: Range<Int>
    }

    static func u32(_ b: [UInt8], _ at: Int) -> UInt32 {
        UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
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

    public static func fields(_ b: [UInt8], _ range: Range<Int>) -> [Field]? {
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

    /// The value of varint field `number` (the last one, as protobuf reads
    /// repeated scalars), if present.
    public static func varintField(_ b: [UInt8], _ fields: [Field], _ number: UInt64) -> UInt64? {
        guard let f = fields.last(where: { $0.number == number && $0.wireType == 0 }) else { return nil }
        var i = f.value.lowerBound
        return varint(b, &i)
    }

    /// Field `number` holding varint `value`, encoded.
    static func varint(field number: UInt64, _ value: UInt64) -> [UInt8] {
        encodeVarint(number << 3) + encodeVarint(value)
    }

    static func lengthDelimited(_ number: UInt64, _ payload: [UInt8]) -> [UInt8] {
        encodeVarint(number << 3 | 2) + encodeVarint(UInt64(payload.count)) + payload
    }
}
