@testable import ProcessCR

/// Builders for CRIU image files in tests.
enum ImageFixture {
    static func varintField(_ n: UInt64, _ v: UInt64) -> [UInt8] { Wire.varint(field: n, v) }

    /// An image: IMG_COMMON_MAGIC, the image's own magic, then the entries
    /// with their u32 lengths.
    static func image(magic: UInt32, _ entries: [[UInt8]]) -> [UInt8] {
        func le(_ n: UInt32) -> [UInt8] { [UInt8(n & 0xff), UInt8(n >> 8 & 0xff), UInt8(n >> 16 & 0xff), UInt8(n >> 24)] }
        var out = le(0x5456_4319) + le(magic)
        for e in entries { out += le(UInt32(e.count)) + e }
        return out
    }
}
