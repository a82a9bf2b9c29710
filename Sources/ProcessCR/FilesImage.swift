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
        let path = "\(imagesDir)/files.img"
        guard !paths.isEmpty else { return [] }
        let image = try CriuImageFile(path: path)
        let b = image.bytes
        var out = Array(b[0..<8])
        var done: Set<String> = []
        for entry in image.entries {
            guard let fe = Wire.fields(b, entry) else {
                throw CriuImageFile.Malformed(path: path, why: "entry at \(entry.lowerBound - 4) does not parse")
            }
            var rewritten: [UInt8]?
            if let reg = fe.first(where: { $0.number == 3 && $0.wireType == 2 }), let rf = Wire.fields(b, reg.value),
               rf.contains(where: { $0.number == 9 && $0.wireType == 0 && b[$0.value.lowerBound] != 0 }),
               let name = rf.first(where: { $0.number == 6 && $0.wireType == 2 }),
               case let key = String(decoding: b[name.value], as: UTF8.self), let target = paths[key] {
                var reg2: [UInt8] = []
                for f in rf where f.number != 6 && f.number != 7 && f.number != 9 { reg2 += b[f.whole] }
                reg2 += Wire.lengthDelimited(6, Array(target.utf8))
                var entry2: [UInt8] = []
                for f in fe where f.number != 3 { entry2 += b[f.whole] }
                entry2 += Wire.lengthDelimited(3, reg2)
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
