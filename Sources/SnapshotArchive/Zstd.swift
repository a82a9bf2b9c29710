import CZstd
import Foundation

/// zstd compression of a stream (libzstd's streaming API): `export
/// --compress zstd`. The output is one zstd frame, what `zstd -d` reads.
public final class ZstdSink: ByteSink {
    let inner: ByteSink
    let context: OpaquePointer
    var out = [UInt8](repeating: 0, count: ZSTD_CStreamOutSize())

    public static let magic: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD]

    public init(_ inner: ByteSink, level: Int32 = 3) throws {
        guard let c = ZSTD_createCCtx() else { throw ArchiveError("zstd: cannot make a compression context") }
        self.inner = inner
        self.context = c
        try check(ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level))
        try check(ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1))
    }

    deinit { ZSTD_freeCCtx(context) }

    func check(_ r: Int) throws {
        if ZSTD_isError(r) != 0 { throw ArchiveError("zstd: \(String(cString: ZSTD_getErrorName(r)))") }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count > 0 else { return }
        var input = ZSTD_inBuffer(src: bytes.baseAddress, size: bytes.count, pos: 0)
        while input.pos < input.size {
            try drain(&input, ZSTD_e_continue)
        }
    }

    /// Compresses what `input` holds into `out`, writes what came out;
    /// returns what zstd says is left to flush.
    @discardableResult
    func drain(_ input: inout ZSTD_inBuffer, _ mode: ZSTD_EndDirective) throws -> Int {
        let outCount = out.count
        let (left, produced) = try out.withUnsafeMutableBytes { buf -> (Int, Int) in
            var output = ZSTD_outBuffer(dst: buf.baseAddress, size: outCount, pos: 0)
            let r = ZSTD_compressStream2(context, &output, &input, mode)
            try check(r)
            return (r, output.pos)
        }
        if produced > 0 { try out.withUnsafeBytes { try inner.write(UnsafeRawBufferPointer(rebasing: $0[..<produced])) } }
        return left
    }

    public func finish() throws {
        var input = ZSTD_inBuffer(src: nil, size: 0, pos: 0)
        while try drain(&input, ZSTD_e_end) != 0 {}
        try inner.finish()
    }
}

/// zstd decompression of a stream: `import` of a compressed archive. One
/// or more frames, each checked against its checksum when it has one.
public final class ZstdSource: ByteSource {
    let inner: ByteSource
    let context: OpaquePointer
    var input = [UInt8](repeating: 0, count: ZSTD_DStreamInSize())
    var inputPos = 0
    var inputCount = 0
    var ended = false
    /// zstd's last answer: 0 when a frame has just ended.
    var frameLeft = 1

    public init(_ inner: ByteSource) throws {
        guard let d = ZSTD_createDCtx() else { throw ArchiveError("zstd: cannot make a decompression context") }
        self.inner = inner
        self.context = d
    }

    deinit { ZSTD_freeDCtx(context) }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard buffer.count > 0 else { return 0 }
        while true {
            if inputPos == inputCount && !ended {
                inputCount = try input.withUnsafeMutableBytes { try inner.read(into: $0) }
                inputPos = 0
                if inputCount == 0 { ended = true }
            }
            if ended && inputPos == inputCount {
                guard frameLeft == 0 else { throw ArchiveError("the compressed archive ends in the middle of a zstd frame: it is cut short") }
                return 0
            }
            let (r, consumed, produced) = input.withUnsafeBytes { inbuf -> (Int, Int, Int) in
                var i = ZSTD_inBuffer(src: inbuf.baseAddress, size: inputCount, pos: inputPos)
                var o = ZSTD_outBuffer(dst: buffer.baseAddress, size: buffer.count, pos: 0)
                let r = ZSTD_decompressStream(context, &o, &i)
                return (r, i.pos, o.pos)
            }
            if ZSTD_isError(r) != 0 {
                throw ArchiveError("the compressed archive is damaged: zstd says \(String(cString: ZSTD_getErrorName(r)))")
            }
            inputPos = consumed
            frameLeft = r
            if produced > 0 { return produced }
        }
    }
}
