import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// CRIU's files.img, read and rewritten at the protobuf wire level (see
/// `CriuImageFile`): its entries are FileEntry messages. Only what crsnap
/// changes is interpreted:
///
///   FileEntry:    1 type (1 = REG), 2 id, 3 reg (RegFileEntry)
///   RegFileEntry: 2 flags, 6 name, 7 mnt_id, 8 size, 9 ext
///
/// (and the timerfd fields `rearmExpiredTimers` names).
///
/// Every other field is copied through byte for byte.
public enum FilesImage {
    /// A regular file the dumped tasks had open, as CRIU recorded it.
    public struct RegularFile: Equatable {
        /// Its path as the tasks saw it.
        public var path: String
        /// The open(2) flags of the file description.
        public var flags: UInt32
        /// The size CRIU checks the file has before it restores it; nil when
        /// it checks none (a file open write-only with O_APPEND: a log).
        public var size: UInt64?
    }

    /// The regular files of `imagesDir`'s files.img.
    public static func regularFiles(in imagesDir: String) throws -> [RegularFile] {
        let image = try CriuImageFile(path: "\(imagesDir)/files.img")
        let b = image.bytes
        var out: [RegularFile] = []
        for k in image.entries.indices {
            let fe = try image.fields(k)
            guard Wire.varintField(b, fe, 1) == 1, let reg = fe.last(where: { $0.number == 3 && $0.wireType == 2 }),
                  let rf = Wire.fields(b, reg.value),
                  let name = rf.last(where: { $0.number == 6 && $0.wireType == 2 }) else { continue }
            out.append(RegularFile(path: String(decoding: b[name.value], as: UTF8.self),
                                   flags: UInt32(truncatingIfNeeded: Wire.varintField(b, rf, 2) ?? 0),
                                   size: Wire.varintField(b, rf, 8)))
        }
        return out
    }

    /// Rewrites the regular-file entries CRIU recorded as external files (by
    /// the key they were declared with) into plain files at the given
    /// absolute paths, with no mount id: CRIU then opens each by path from
    /// the root of the restored mount namespace. Returns the keys rewritten.
    @discardableResult
    public static func relocateExternal(in imagesDir: String, to paths: [String: String]) throws -> Set<String> {
        guard !paths.isEmpty else { return [] }
        var done: Set<String> = []
        try rewrite("\(imagesDir)/files.img") { b, fe in
            guard let reg = fe.first(where: { $0.number == 3 && $0.wireType == 2 }), let rf = Wire.fields(b, reg.value),
                  rf.contains(where: { $0.number == 9 && $0.wireType == 0 && b[$0.value.lowerBound] != 0 }),
                  let name = rf.first(where: { $0.number == 6 && $0.wireType == 2 }),
                  case let key = String(decoding: b[name.value], as: UTF8.self), let target = paths[key] else { return nil }
            var reg2: [UInt8] = []
            for f in rf where f.number != 6 && f.number != 7 && f.number != 9 { reg2 += b[f.whole] }
            reg2 += Wire.lengthDelimited(6, Array(target.utf8))
            done.insert(key)
            return replacing(3, in: fe, b, with: reg2)
        }
        return done
    }

    /// Re-arms periodic timerfds that CRIU would restore disarmed, and
    /// returns how many it changed.
    ///
    /// A periodic timer that expired while the tasks were frozen reads
    /// `it_value (0, 0)` in fdinfo (the kernel reports no negative remaining
    /// time; it moves the timer on only when the task reads it), so CRIU
    /// records a value of 0 beside the pending ticks, and its restore calls
    /// timerfd_settime with that value: the timer is disarmed, the ticks are
    /// read once and the task's next read waits for ever
    /// (checkpoint-restore/criu#3162). The fix gives such a relative timer
    /// one interval to its next expiry, as the kernel would after the read.
    /// An absolute timer (TFD_TIMER_ABSTIME) is restored armed by CRIU, and a
    /// one-shot timer with value 0 has fired and stays disarmed.
    ///
    ///   FileEntry:    1 type (17 = TIMERFD), 12 tfd (TimerfdEntry)
    ///   TimerfdEntry: 6 settime_flags, 7 vsec, 8 vnsec, 9 isec, 10 insec
    @discardableResult
    public static func rearmExpiredTimers(in imagesDir: String) throws -> Int {
        var changed = 0
        try rewrite("\(imagesDir)/files.img") { b, fe in
            guard Wire.varintField(b, fe, 1) == 17, let tfd = fe.last(where: { $0.number == 12 && $0.wireType == 2 }),
                  let tf = Wire.fields(b, tfd.value) else { return nil }
            let flags = Wire.varintField(b, tf, 6) ?? 0
            let isec = Wire.varintField(b, tf, 9) ?? 0, insec = Wire.varintField(b, tf, 10) ?? 0
            guard flags & 1 == 0, isec != 0 || insec != 0,
                  Wire.varintField(b, tf, 7) ?? 0 == 0, Wire.varintField(b, tf, 8) ?? 0 == 0 else { return nil }
            var tf2: [UInt8] = []
            for f in tf where f.number != 7 && f.number != 8 { tf2 += b[f.whole] }
            tf2 += Wire.varint(field: 7, isec) + Wire.varint(field: 8, insec)
            changed += 1
            return replacing(12, in: fe, b, with: tf2)
        }
        return changed
    }

    /// A FileEntry with its length-delimited field `number` replaced by one
    /// holding `payload` (put last; protobuf reads fields in any order).
    static func replacing(_ number: UInt64, in fe: [Wire.Field], _ b: [UInt8], with payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        for f in fe where f.number != number { out += b[f.whole] }
        return out + Wire.lengthDelimited(number, payload)
    }

    /// Rewrites the entries of image `path` for which `change` returns new
    /// bytes; the file is written again (atomically) only if one changed.
    static func rewrite(_ path: String, _ change: ([UInt8], [Wire.Field]) throws -> [UInt8]?) throws {
        let image = try CriuImageFile(path: path)
        let b = image.bytes
        var out = Array(b[0..<8])
        var any = false
        for entry in image.entries {
            guard let fe = Wire.fields(b, entry) else {
                throw CriuImageFile.Malformed(path: path, why: "entry at \(entry.lowerBound - 4) does not parse")
            }
            let rewritten = try change(b, fe)
            any = any || rewritten != nil
            let bytes = rewritten ?? Array(b[entry])
            let len = UInt32(bytes.count)
            out += [UInt8(len & 0xff), UInt8(len >> 8 & 0xff), UInt8(len >> 16 & 0xff), UInt8(len >> 24)]
            out += bytes
        }
        if any { try Sys.writeAtomically(path, out) }
    }
}
