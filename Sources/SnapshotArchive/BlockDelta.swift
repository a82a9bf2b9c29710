import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A file as the blocks in which it differs from another one (its base) that
/// the receiving side already holds: CRIU's page images of two snapshots of
/// one service, whose memory mostly did not change, at the same offsets.
///
///     "CRSNAPD1"  magic
///     u64         the file's size (little-endian)
///     u32         block size
///     32 bytes    SHA-256 of the base as the sender knew it (zeros: unknown)
///     bitmap      one bit per block, low bit first: 1 = its bytes follow,
///                 0 = the base's block at the same offset
///     blocks      the changed blocks in order (the last may be short)
///
/// Planned before it is written (its size goes into a tar header first).
public enum BlockDelta {
    public static let magic = Array("CRSNAPD1".utf8)
    public static let blockSize = 4096
    static let headerBytes = 8 + 8 + 4 + 32

    public struct Plan {
        public let size: UInt64
        /// One bit per block, set where the file differs from its base.
        let bitmap: [UInt8]
        public let changedBlocks: Int
        public var blocks: Int { Int((size + UInt64(blockSize) - 1) / UInt64(blockSize)) }
        /// Bytes of the encoded delta.
        public var encodedSize: UInt64 {
            var bytes = UInt64(BlockDelta.headerBytes + bitmap.count)
            for i in 0..<blocks where changed(i) { bytes += UInt64(BlockDelta.length(of: i, size: size)) }
            return bytes
        }

        func changed(_ i: Int) -> Bool { bitmap[i >> 3] & (1 << UInt8(i & 7)) != 0 }
    }

    static func length(of block: Int, size: UInt64) -> Int {
        Int(min(UInt64(blockSize), size - UInt64(block) * UInt64(blockSize)))
    }

    /// Compares `target` with `base` block by block.
    public static func plan(target: String, base: String) throws -> Plan {
        let t = try Sys.open(target, O_RDONLY | O_CLOEXEC)
        defer { Sys.close(t) }
        let b = try Sys.open(base, O_RDONLY | O_CLOEXEC)
        defer { Sys.close(b) }
        var st = stat()
        guard fstat(t, &st) == 0 else { throw SystemError("stat", target, errno: errno) }
        let size = UInt64(st.st_size)
        let blocks = Int((size + UInt64(blockSize) - 1) / UInt64(blockSize))
        var bitmap = [UInt8](repeating: 0, count: (blocks + 7) / 8)
        var changed = 0
        let chunk = 256 * blockSize
        var tb = [UInt8](repeating: 0, count: chunk), bb = [UInt8](repeating: 0, count: chunk)
        var offset: UInt64 = 0
        while offset < size {
            let want = Int(min(UInt64(chunk), size - offset))
            try readFully(t, &tb, want, at: offset, target)
            let got = try readUpTo(b, &bb, want, at: offset, base)
            tb.withUnsafeBytes { tp in
                bb.withUnsafeBytes { bp in
                    var i = 0
                    while i < want {
                        let n = min(blockSize, want - i)
                        if !(i + n <= got && memcmp(tp.baseAddress! + i, bp.baseAddress! + i, n) == 0) {
                            let block = Int(offset / UInt64(blockSize)) + i / blockSize
                            bitmap[block >> 3] |= 1 << UInt8(block & 7)
                            changed += 1
                        }
                        i += n
                    }
                }
            }
            offset += UInt64(want)
        }
        return Plan(size: size, bitmap: bitmap, changedBlocks: changed)
    }

    /// Writes the delta of `target` as planned. `baseSHA256`: the base's
    /// hash as hex, for the receiver to check it holds the same base.
    public static func write(_ plan: Plan, target: String, baseSHA256: String?, into sink: ByteSink) throws {
        let t = try Sys.open(target, O_RDONLY | O_CLOEXEC)
        defer { Sys.close(t) }
        var st = stat()
        guard fstat(t, &st) == 0, UInt64(st.st_size) == plan.size else {
            throw ArchiveError("\(target) changed while it was archived (it had \(plan.size) bytes)")
        }
        var header = magic + le(plan.size, 8) + le(UInt64(blockSize), 4)
        header += baseSHA256.flatMap(hexBytes) ?? [UInt8](repeating: 0, count: 32)
        try sink.write(header + plan.bitmap)
        var buf = [UInt8](repeating: 0, count: blockSize)
        for i in 0..<plan.blocks where plan.changed(i) {
            let n = length(of: i, size: plan.size)
            try readFully(t, &buf, n, at: UInt64(i) * UInt64(blockSize), target)
            try buf.withUnsafeBytes { try sink.write(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
        }
    }

    /// Rebuilds the file from a delta in `source` and its `base` into `sink`;
    /// its size. `expectBaseSHA256`: the base's hash as this side knows it
    /// (nil: unknown); a delta made against another base is refused.
    @discardableResult
    public static func apply(from source: ByteSource, base: String, expectBaseSHA256: String?, into sink: ByteSink) throws -> UInt64 {
        var head = [UInt8](repeating: 0, count: headerBytes)
        guard try head.withUnsafeMutableBytes({ try source.readFully(into: $0) }) == headerBytes, Array(head[0..<8]) == magic else {
            throw ArchiveError("not a block delta (bad header)")
        }
        let size = leValue(head[8..<16]), bs = Int(leValue(head[16..<20]))
        guard bs == blockSize else { throw ArchiveError("a block delta of \(bs)-byte blocks; this crsnap reads \(blockSize)") }
        let sent = Array(head[20..<52])
        if let expect = expectBaseSHA256.flatMap(hexBytes), sent != [UInt8](repeating: 0, count: 32), sent != expect {
            throw ArchiveError("its base differs from \(base), which this side holds")
        }
        let blocks = Int((size + UInt64(bs) - 1) / UInt64(bs))
        var bitmap = [UInt8](repeating: 0, count: (blocks + 7) / 8)
        guard try bitmap.withUnsafeMutableBytes({ try source.readFully(into: $0) }) == bitmap.count else {
            throw ArchiveError("a block delta cut short (in its bitmap)")
        }
        let b = try Sys.open(base, O_RDONLY | O_CLOEXEC)
        defer { Sys.close(b) }
        var buf = [UInt8](repeating: 0, count: bs)
        for i in 0..<blocks {
            let n = length(of: i, size: size)
            if bitmap[i >> 3] & (1 << UInt8(i & 7)) != 0 {
                guard try buf.withUnsafeMutableBytes({ try source.readFully(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<n])) }) == n else {
                    throw ArchiveError("a block delta cut short (block \(i))")
                }
            } else {
                guard try readUpTo(b, &buf, n, at: UInt64(i) * UInt64(bs), base) == n else {
                    throw ArchiveError("\(base) is shorter than the delta's base (block \(i))")
                }
            }
            try buf.withUnsafeBytes { try sink.write(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
        }
        return size
    }

    static func le(_ v: UInt64, _ bytes: Int) -> [UInt8] { (0..<bytes).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

    static func leValue(_ b: ArraySlice<UInt8>) -> UInt64 {
        b.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }

    static func hexBytes(_ hex: String) -> [UInt8]? {
        let chars = Array(hex.utf8)
        guard chars.count == 64 else { return nil }
        var out: [UInt8] = []
        for i in stride(from: 0, to: 64, by: 2) {
            guard let v = UInt8(String(decoding: chars[i..<(i + 2)], as: UTF8.self), radix: 16) else { return nil }
            out.append(v)
        }
        return out
    }

    static func readUpTo(_ fd: Int32, _ buf: inout [UInt8], _ count: Int, at offset: UInt64, _ path: String) throws -> Int {
        var done = 0
        while done < count {
            let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("read", path, errno: errno)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    static func readFully(_ fd: Int32, _ buf: inout [UInt8], _ count: Int, at offset: UInt64, _ path: String) throws {
        guard try readUpTo(fd, &buf, count, at: offset, path) == count else {
            throw ArchiveError("\(path) ended early (at \(offset))")
        }
    }
}
