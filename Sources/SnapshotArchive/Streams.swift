import CCrypto
import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where the bytes of an archive go: a file, a pipe, a compressor, a
/// `btrfs receive`.
public protocol ByteSink: AnyObject {
    func write(_ bytes: UnsafeRawBufferPointer) throws
    /// No more bytes: flush what is buffered (a compressor's last frame).
    func finish() throws
}

/// Where the bytes of an archive come from.
public protocol ByteSource: AnyObject {
    /// Up to `buffer.count` bytes; 0 at the end.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
}

extension ByteSink {
    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }
}

extension ByteSource {
    /// Fills `buffer` unless the source ends first; the count read.
    public func readFully(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var done = 0
        while done < buffer.count {
            let n = try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Everything left in the source into `sink` (not finished), a MiB at a time.
    public func copy(to sink: ByteSink) throws {
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = try buf.withUnsafeMutableBytes { try read(into: $0) }
            if n == 0 { return }
            try buf.withUnsafeBytes { try sink.write(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
        }
    }
}

/// An archive whose bytes are not what they should be: what and where.
public struct ArchiveError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A file descriptor as a sink: every byte written, EINTR retried. `name`
/// says what it is in errors. Counts the bytes, for progress and summaries.
public final class FileSink: ByteSink {
    public let fd: Int32
    public let name: String
    public private(set) var bytes: UInt64 = 0
    /// Told the bytes written so far after each write (a progress meter).
    public var onProgress: ((UInt64) -> Void)?

    public init(fd: Int32, name: String, meter: TransferMeter? = nil) {
        self.fd = fd
        self.name = name
        onProgress = meter.map { m in { m.update($0) } }
    }

    public func write(_ data: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < data.count {
            let n = Glibc.write(fd, data.baseAddress! + offset, data.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("write", name, errno: errno)
            }
            offset += n
        }
        bytes += UInt64(data.count)
        onProgress?(bytes)
    }

    public func finish() throws {}
}

/// A file descriptor as a source; counts the bytes read.
public final class FileSource: ByteSource {
    public let fd: Int32
    public let name: String
    public private(set) var bytes: UInt64 = 0
    /// Told the bytes read so far after each read (a progress meter).
    public var onProgress: ((UInt64) -> Void)?

    public init(fd: Int32, name: String, meter: TransferMeter? = nil) {
        self.fd = fd
        self.name = name
        onProgress = meter.map { m in { m.update($0) } }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n >= 0 {
                bytes += UInt64(n)
                onProgress?(bytes)
                return n
            }
            if errno != EINTR { throw SystemError("read", name, errno: errno) }
        }
    }
}

/// A source that can be looked into before it is read (to tell a zstd
/// frame from a plain archive by its first bytes).
public final class PeekableSource: ByteSource {
    let inner: ByteSource
    var pending: [UInt8] = []

    public init(_ inner: ByteSource) { self.inner = inner }

    /// Up to `count` first bytes, which reads still return.
    public func peek(_ count: Int) throws -> [UInt8] {
        while pending.count < count {
            var chunk = [UInt8](repeating: 0, count: count - pending.count)
            let n = try chunk.withUnsafeMutableBytes { try inner.read(into: $0) }
            if n == 0 { break }
            pending += chunk[..<n]
        }
        return Array(pending.prefix(count))
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard pending.isEmpty else {
            let n = min(buffer.count, pending.count)
            pending.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[..<n])) }
            pending.removeFirst(n)
            return n
        }
        return try inner.read(into: buffer)
    }
}

/// SHA-256 of bytes handed over piece by piece (libcrypto).
public final class SHA256 {
    private var context: OpaquePointer?

    public init() {
        context = crsnap_sha256_new()
    }

    deinit { crsnap_sha256_free(context) }

    public func update(_ bytes: UnsafeRawBufferPointer) throws {
        guard let context, bytes.count > 0 else {
            if self.context == nil { throw ArchiveError("SHA-256: libcrypto could not start a digest") }
            return
        }
        guard crsnap_sha256_update(context, bytes.baseAddress, bytes.count) == 0 else {
            throw ArchiveError("SHA-256: libcrypto failed")
        }
    }

    /// The digest as lower-case hex; the hasher is spent.
    public func hex() throws -> String {
        guard let context else { throw ArchiveError("SHA-256: libcrypto could not start a digest") }
        self.context = nil
        var out = [UInt8](repeating: 0, count: 32)
        guard crsnap_sha256_final(context, &out) == 0 else { throw ArchiveError("SHA-256: libcrypto failed") }
        return out.map { String(format: "%02x", $0) }.joined()
    }
}
