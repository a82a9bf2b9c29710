import CLibmount
import FSSnapshot
import Foundation
import SwiftProtobuf
#if canImport(Glibc)
import Glibc
#endif

/// A CRIU request that failed: CRIU's own errno and message, and the lines of
/// its log that say "Error", so the reader sees why without opening the log.
public struct CriuError: Error, CustomStringConvertible {
    public let request: String
    public let errno: Int32
    public let message: String
    public let logPath: String?
    public let logErrors: [String]

    public var description: String {
        var s = "criu \(request) failed"
        if !message.isEmpty { s += ": \(message)" }
        if errno != 0 { s += " (\(String(cString: strerror(errno))))" }
        if !logErrors.isEmpty {
            s += "\n  " + logErrors.joined(separator: "\n  ")
        }
        if let logPath { s += "\n  (full log: \(logPath))" }
        return s
    }
}

/// The wire to a CRIU process: one serialized message a packet.
public protocol CriuTransport: AnyObject {
    func send(_ bytes: [UInt8]) throws
    /// The next packet; throws when the peer has gone away.
    func receive() throws -> [UInt8]
    func close()
}

/// What a dump asks of its caller at CRIU's notification points
/// ("pre-dump", "post-dump", "network-lock", ...). Throwing fails the dump.
public protocol CriuNotifyHandler: AnyObject {
    func criuNotify(_ script: String, pid: Int32) throws
}

/// The CRIU RPC conversation: send a request, answer notifications until the
/// final reply arrives, map failure to `CriuError`.
public final class CriuClient {
    let transport: CriuTransport

    public init(transport: CriuTransport) {
        self.transport = transport
    }

    /// Sends `request` and loops over replies; NOTIFY replies go to `handler`
    /// and are answered with its verdict.
    public func call(_ request: CriuReq, handler: CriuNotifyHandler? = nil,
                     logPath: String? = nil) throws -> CriuResp {
        try send(request)
        while true {
            let resp: CriuResp
            do {
                resp = try CriuResp(serializedBytes: try transport.receive())
            } catch let e as SystemError {
                throw CriuError(request: name(request.type), errno: e.errno,
                                message: "lost the connection to criu (\(e))", logPath: logPath,
                                logErrors: CriuLog.errors(at: logPath))
            }
            if resp.type == .notify {
                var ok = true
                var failure: Error?
                do {
                    try handler?.criuNotify(resp.notify.script, pid: resp.notify.pid)
                } catch {
                    ok = false
                    failure = error
                }
                var answer = CriuReq()
                answer.type = .notify
                answer.notifySuccess = ok
                try send(answer)
                if let failure {
                    // CRIU aborts and resumes the tasks; drain its final answer so
                    // the tasks are thawed before we report.
                    _ = try? CriuResp(serializedBytes: try transport.receive())
                    throw failure
                }
                continue
            }
            guard resp.success else {
                // CRIU reports the first error it logged, which on machines
                // without CAP_SYS_RESOURCE is a harmless rlimit line; the log's
                // own error lines follow in the description.
                let message = CriuLog.isHarmless(resp.crErrmsg) ? "" : resp.crErrmsg
                throw CriuError(request: name(request.type), errno: resp.crErrno,
                                message: message, logPath: logPath,
                                logErrors: CriuLog.errors(at: logPath))
            }
            return resp
        }
    }

    func send(_ request: CriuReq) throws {
        try transport.send(try request.serializedBytes())
    }

    func name(_ type: CriuReqType) -> String {
        switch type {
        case .dump: return "dump"
        case .restore: return "restore"
        case .version: return "version"
        case .check: return "check"
        default: return "request \(type.rawValue)"
        }
    }

    public func close() { transport.close() }
}

/// `criu swrk FD` over a SOCK_SEQPACKET socketpair. The parent's copy of
/// CRIU's end is closed right after the spawn, so a crashed CRIU reads as EOF
/// instead of a hang.
public final class CriuSwrk: CriuTransport {
    public let pid: pid_t
    private var fd: Int32
    private var reaped = false

    /// Starts CRIU. `extraFds` become fds 4, 5, ... in CRIU (for inherit_fd).
    public init(binary: String, extraFds: [Int32] = [], stderrFd: Int32 = -1) throws {
        var sv: [Int32] = [0, 0]
        try Sys.check("socketpair", "criu") { socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) }
        let null = try Sys.open("/dev/null", O_RDWR)
        defer { Sys.close(null) }
        let fdmap: [Int32] = [null, null, stderrFd >= 0 ? stderrFd : null, sv[1]] + extraFds
        let pid = Program.spawn(path: binary, argv: [binary, "swrk", "3"],
                                env: Criu.environment,
                                fdmap: fdmap, newSession: false)
        let spawnErrno = Glibc.errno
        Sys.close(sv[1])
        guard pid > 0 else {
            Sys.close(sv[0])
            throw SystemError("spawn", "\(binary) swrk", errno: spawnErrno)
        }
        self.pid = pid
        self.fd = sv[0]
    }

    public func send(_ bytes: [UInt8]) throws {
        let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n < 0 { throw SystemError("send", "criu swrk", errno: Glibc.errno) }
        if n != bytes.count { throw SystemError("send", "criu swrk (short packet)", errno: EMSGSIZE) }
    }

    public func receive() throws -> [UInt8] {
        while true {
            // Peek at the true size first: a packet is never cut short silently.
            let size = Glibc.recv(fd, nil, 0, Int32(MSG_PEEK | MSG_TRUNC))
            if size < 0 {
                if Glibc.errno == EINTR { continue }
                throw SystemError("recv", "criu swrk", errno: Glibc.errno)
            }
            if size == 0 { throw SystemError("recv", "criu swrk (criu exited)", errno: ECONNRESET) }
            var buf = [UInt8](repeating: 0, count: size)
            let n = buf.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw SystemError("recv", "criu swrk", errno: Glibc.errno)
            }
            return Array(buf[0..<n])
        }
    }

    public func close() {
        if fd >= 0 {
            Sys.close(fd)
            fd = -1
        }
        if !reaped {
            _ = Program.wait(pid)
            reaped = true
        }
    }

    deinit { close() }
}

public struct CriuVersionInfo: CustomStringConvertible, Comparable {
    public let major: Int
    public let minor: Int
    public let sublevel: Int
    public let gitid: String

    public init(major: Int, minor: Int, sublevel: Int, gitid: String = "") {
        self.major = major
        self.minor = minor
        self.sublevel = sublevel
        self.gitid = gitid
    }

    public var description: String { "\(major).\(minor)" + (sublevel > 0 ? ".\(sublevel)" : "") }

    public static func == (a: CriuVersionInfo, b: CriuVersionInfo) -> Bool {
        (a.major, a.minor, a.sublevel) == (b.major, b.minor, b.sublevel)
    }

    public static func < (a: CriuVersionInfo, b: CriuVersionInfo) -> Bool {
        (a.major, a.minor, a.sublevel) < (b.major, b.minor, b.sublevel)
    }

    /// The first CRIU that checkpoints on this kernel (see docs/design notes).
    public static let required = CriuVersionInfo(major: 4, minor: 2, sublevel: 0)
}

/// Where CRIU is and what it says about itself.
public struct Criu {
    public let binary: String
    /// The environment every CRIU process crsnap starts gets: a PATH, nothing else.
    public static let environment = ["PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

    public init(binary: String) { self.binary = binary }

    /// $CRSNAP_CRIU, else `criu` in PATH or the sbin directories.
    public static func locate() throws -> Criu {
        if let env = ProcessInfo.processInfo.environment["CRSNAP_CRIU"], !env.isEmpty {
            guard access(env, X_OK) == 0 else {
                throw SystemError("find criu (CRSNAP_CRIU)", env, errno: Glibc.errno)
            }
            return Criu(binary: env)
        }
        guard let path = Program.find("criu") else {
            throw SystemError("find", "criu in PATH (install CRIU >= \(CriuVersionInfo.required) with Scripts/testenv)", errno: ENOENT)
        }
        return Criu(binary: path)
    }

    /// Asks the running CRIU for its version over RPC (never trust a build-time one).
    public func version() throws -> CriuVersionInfo {
        let swrk = try CriuSwrk(binary: binary)
        let client = CriuClient(transport: swrk)
        defer { client.close() }
        var req = CriuReq()
        req.type = .version
        let resp = try client.call(req)
        let v = resp.version
        return CriuVersionInfo(major: Int(v.majorNumber), minor: Int(v.minorNumber),
                               sublevel: Int(v.sublevel), gitid: v.gitid)
    }
}

public enum CriuLog {
    /// Errors CRIU logs on every run on machines without CAP_SYS_RESOURCE.
    static func isHarmless<S: StringProtocol>(_ line: S) -> Bool {
        line.contains("Can't setup RLIMIT_NOFILE")
    }

    /// The lines of a CRIU log that report errors (the last few).
    public static func errors(at path: String?, limit: Int = 12) -> [String] {
        guard let path, let text = try? Sys.readText(path) else { return [] }
        let lines = text.split(separator: "\n").filter { ($0.contains("Error") || $0.contains("BUG")) && !isHarmless($0) }
        return lines.suffix(limit).map { String($0) }
    }
}
