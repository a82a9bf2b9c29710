import CLibmount
import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The monitor's control socket: one SOCK_SEQPACKET message a request and a reply.
/// Addressed through /proc/self/fd/DIRFD/monitor.sock so long store paths fit
/// in sockaddr_un.
enum MonitorChannel {
    static let socketName = "monitor.sock"
    static let maxMessage = 1 << 20

    @discardableResult
    static func withAddress<R>(dirFd: Int32, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) throws -> R {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let path = Array("/proc/self/fd/\(dirFd)/\(socketName)".utf8) + [0]
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            for (i, b) in path.enumerated() where i < dst.count { dst[i] = b }
        }
        return try withUnsafePointer(to: &addr) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                try body($0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }

    static func newSocket() throws -> Int32 {
        try Sys.check("socket", "monitor channel") {
            socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
    }

    /// A listening socket in `dir` (the monitor's side).
    static func listen(dir: String) throws -> Int32 {
        let dirFd = try Sys.open(dir, O_RDONLY | O_DIRECTORY)
        defer { Sys.close(dirFd) }
        try Sys.unlink("\(dir)/\(socketName)")
        let fd = try newSocket()
        try withAddress(dirFd: dirFd) { addr, len in
            try Sys.check("bind", "\(dir)/\(socketName)") { bind(fd, addr, len) }
        }
        try Sys.check("listen", "\(dir)/\(socketName)") { Glibc.listen(fd, 8) }
        return fd
    }

    /// Sends `request` to the monitor of `dir` and waits for its reply.
    /// `afterSend` runs once the request is on its way (a test hook).
    static func request(dir: String, _ request: String, afterSend: () throws -> Void = {}) throws -> String {
        let dirFd = try Sys.open(dir, O_RDONLY | O_DIRECTORY)
        defer { Sys.close(dirFd) }
        let fd = try newSocket()
        defer { Sys.close(fd) }
        try withAddress(dirFd: dirFd) { addr, len in
            try Sys.check("connect", "\(dir)/\(socketName)") { connect(fd, addr, len) }
        }
        try sendMessage(fd, request)
        try afterSend()
        return try receiveMessage(fd)
    }

    /// What a reply that is not the one asked for says: the monitor's own
    /// words ("err WORDS"), or the reply itself.
    static func words(_ reply: String) -> String {
        reply.hasPrefix("err ") ? String(reply.dropFirst(4)) : "the monitor answered: \(reply)"
    }

    static func sendMessage(_ fd: Int32, _ text: String) throws {
        let bytes = Array(text.utf8)
        let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n != bytes.count { throw SystemError("send", "monitor channel", errno: n < 0 ? errno : EMSGSIZE) }
    }

    static func receiveMessage(_ fd: Int32) throws -> String {
        while true {
            let size = recv(fd, nil, 0, Int32(MSG_PEEK | MSG_TRUNC))
            if size < 0 {
                if errno == EINTR { continue }
                throw SystemError("recv", "monitor channel", errno: errno)
            }
            if size == 0 { throw SystemError("recv", "monitor channel (monitor went away)", errno: ECONNRESET) }
            guard size <= maxMessage else { throw SystemError("recv", "monitor channel", errno: EMSGSIZE) }
            var buf = [UInt8](repeating: 0, count: size)
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("recv", "monitor channel", errno: errno)
            }
            return String(decoding: buf[0..<n], as: UTF8.self)
        }
    }
}
