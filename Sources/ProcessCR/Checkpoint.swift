import FSSnapshot
import Foundation
import SwiftProtobuf
#if canImport(Glibc)
import Glibc
#endif

/// One CRIU dump of a process tree into a directory.
public struct DumpRequest {
    public var pid: Int32
    public var imagesDir: String
    /// The freezer cgroup CRIU freezes the tree through.
    public var freezeCgroup: FreezerCgroup?
    public var leaveRunning = true
    /// Ask for pre-dump/post-dump notifications (the handler gets them).
    public var notify = true
    /// Bytes an unlinked open file may have before CRIU refuses to copy it.
    public var ghostLimit: UInt32 = DumpRequest.defaultGhostLimit
    public static let defaultGhostLimit: UInt32 = 512 << 20
    public var external: [String] = []
    /// CRIU's network lock (nftables) for the dump; refused for a tree in
    /// crsnap's own network namespace (see `Safety.networkLockRefusal`).
    public var networkLock = false
    /// Leave established TCP connections out of the images (CRIU's
    /// tcp_close): they are not put in repair mode, so when the dump ends the
    /// tasks (leaveRunning false) the kernel closes them as for any dying
    /// process and their peers see a FIN or a reset at once. Saved in repair
    /// mode they would end silently, and a peer waiting for an answer would
    /// wait for as long as it allows. A restore of these images must close
    /// them too (`RestoreRequest.closeTCP`).
    public var closeTCP = false

    public init(pid: Int32, imagesDir: String, freezeCgroup: FreezerCgroup?) {
        self.pid = pid
        self.imagesDir = imagesDir
        self.freezeCgroup = freezeCgroup
    }
}

public struct RestoreRequest {
    public var imagesDir: String
    /// The container root CRIU restores into (a mount point on the host).
    public var root: String
    /// (key, fd) pairs: CRIU hands `fd` to the restored tree in place of the
    /// file the images call `key` (e.g. "pipe:[1234]").
    public var inheritFds: [(key: String, fd: Int32)] = []
    /// CRIU external resources, e.g. "mnt[KEY]:/host/dir" for a bind mount.
    public var external: [String] = []
    /// Leave the restored processes stopped (SIGSTOP) for the caller to
    /// mend and resume (see `StoppedTree`).
    public var leaveStopped = false
    /// Restore private anonymous memory on demand through a
    /// `LazyPagesDaemon` started on the same images and `workDir`.
    public var lazyPages = false
    /// CRIU's working directory (its log, the lazy-pages socket); the images
    /// directory when nil.
    public var workDir: String?
    /// Restore established TCP connections closed (CRIU's tcp_close): the
    /// tasks find them shut down and reconnect. For tasks whose connections
    /// the kernel closed when they were killed: their peers have seen the
    /// end, and the killed ends may still hold the address pairs a restore
    /// would bind (FIN_WAIT, TIME_WAIT), which fails it ("Can't connect inet
    /// socket back: Cannot assign requested address").
    public var closeTCP = false
    /// The tree has a network namespace of its own, which CRIU restores:
    /// lock it with nftables while the restore runs (as the dump did).
    public var networkLock = false

    public init(imagesDir: String, root: String) {
        self.imagesDir = imagesDir
        self.root = root
    }
}

/// CRIU's own account of a dump, from its stats-dump file.
public struct DumpStats: Codable, Equatable {
    /// For a snapshot CRIU took no part in (files only): its figures are 0.
    public static let none = DumpStats(freezingMs: 0, frozenMs: 0, memdumpMs: 0, memwriteMs: 0, pagesWritten: 0)

    public var freezingMs: Double
    public var frozenMs: Double
    public var memdumpMs: Double
    public var memwriteMs: Double
    public var pagesWritten: UInt64

    enum CodingKeys: String, CodingKey {
        case freezingMs = "freezing_ms", frozenMs = "frozen_ms", memdumpMs = "memdump_ms"
        case memwriteMs = "memwrite_ms", pagesWritten = "pages_written"
    }
}

/// Dump and restore through CRIU's RPC interface.
public struct Checkpointer {
    public let criu: Criu
    public static let dumpLog = "dump.log"
    public static let restoreLog = "restore.log"

    public init(criu: Criu) { self.criu = criu }

    /// Options every crsnap dump and restore shares: they must agree.
    static func commonOptions(imagesDirFd: Int32) -> CriuOpts {
        var o = CriuOpts()
        o.imagesDirFd = imagesDirFd
        o.logLevel = 4
        o.fileLocks = true
        o.tcpEstablished = true
        o.extUnixSk = true
        o.linkRemap = true
        // The container's freezer cgroup is crsnap's to manage; restored tasks
        // inherit it from the CRIU process crsnap places there.
        o.manageCgroups = false
        o.networkLock = .skip
        return o
    }

    /// Dumps the tree. The handler sees "pre-dump" before the freeze and
    /// "post-dump" while the tasks are frozen; a throw there aborts the dump
    /// and CRIU resumes the tasks.
    public func dump(_ r: DumpRequest, handler: CriuNotifyHandler?) throws -> DumpStats {
        let dirFd = try Sys.open(r.imagesDir, O_RDONLY | O_DIRECTORY)
        defer { Sys.close(dirFd) }
        var o = Checkpointer.commonOptions(imagesDirFd: dirFd)
        o.pid = r.pid
        o.logFile = Checkpointer.dumpLog
        o.leaveRunning = r.leaveRunning
        o.notifyScripts = r.notify
        o.ghostLimit = r.ghostLimit
        o.external = r.external
        if r.closeTCP { o.tcpClose = true }
        // A listening socket may hold connections the kernel completed but
        // the frozen server has not accepted yet (a client connecting during
        // the freeze): they are left out of the images (the running tree
        // keeps them; a restored one has not heard of them, so their clients
        // are reset) instead of failing the dump.
        o.tcpSkipInFlight = true
        if let cg = r.freezeCgroup {
            try cg.checkFreezable()
            o.freezeCgroup = cg.path
        }
        if r.networkLock {
            if let why = Safety.networkLockRefusal(lock: true, treeNet: Proc.fdTarget(path: "/proc/\(r.pid)/ns/net"),
                                                   selfNet: Proc.fdTarget(path: "/proc/self/ns/net")) {
                throw SystemError("refuse CRIU's network lock for", "pid \(r.pid) (\(why))", errno: EPERM)
            }
            o.networkLock = .nftables
        }
        var req = CriuReq()
        req.type = .dump
        req.opts = o

        let swrk = try CriuSwrk(binary: criu.binary)
        let client = CriuClient(transport: swrk)
        defer { client.close() }
        _ = try client.call(req, handler: handler, logPath: "\(r.imagesDir)/\(Checkpointer.dumpLog)")
        return try Checkpointer.readDumpStats("\(r.imagesDir)/stats-dump")
    }

    /// Restores the tree detached, as a child of the calling process
    /// (rst_sibling), and returns the host pid of its root. `prepare` runs with
    /// CRIU's pid before the request is sent (e.g. to place it in a cgroup).
    public func restore(_ r: RestoreRequest, handler: CriuNotifyHandler? = nil,
                        prepare: (pid_t) throws -> Void = { _ in }) throws -> pid_t {
        let dirFd = try Sys.open(r.imagesDir, O_RDONLY | O_DIRECTORY)
        defer { Sys.close(dirFd) }
        var o = Checkpointer.commonOptions(imagesDirFd: dirFd)
        var workFd: Int32 = -1
        defer { if workFd >= 0 { Sys.close(workFd) } }
        if let dir = r.workDir {
            workFd = try Sys.open(dir, O_RDONLY | O_DIRECTORY)
            o.workDirFd = workFd
        }
        o.lazyPages = r.lazyPages
        o.logFile = Checkpointer.restoreLog
        o.root = r.root
        o.rstSibling = true
        o.external = r.external
        o.leaveStopped = r.leaveStopped
        if r.closeTCP { o.tcpClose = true }
        if r.networkLock { o.networkLock = .nftables }
        // Notifications (e.g. "post-restore": restored, not yet resumed) only when asked for.
        o.notifyScripts = handler != nil
        for (i, inherit) in r.inheritFds.enumerated() {
            var f = CriuInheritFd()
            f.key = inherit.key
            f.fd = Int32(4 + i)
            o.inheritFd.append(f)
        }
        var req = CriuReq()
        req.type = .restore
        req.opts = o

        let swrk = try CriuSwrk(binary: criu.binary, extraFds: r.inheritFds.map { $0.fd })
        let client = CriuClient(transport: swrk)
        defer { client.close() }
        try prepare(swrk.pid)
        let resp = try client.call(req, handler: handler, logPath: "\(r.workDir ?? r.imagesDir)/\(Checkpointer.restoreLog)")
        return resp.restore.pid
    }

    /// Parses CRIU's stats-dump: u32 service magic, u32 stats magic, u32 size,
    /// then one CriuStatsEntry.
    public static func readDumpStats(_ path: String) throws -> DumpStats {
        let bytes = try Sys.readFile(path)
        func u32(_ at: Int) -> UInt32 { Wire.u32(bytes, at) }
        guard bytes.count >= 12, u32(0) == 0x5510_5940, u32(4) == 0x5709_3306 else {
            throw SystemError("parse CRIU stats", path, errno: EINVAL)
        }
        let size = Int(u32(8))
        guard bytes.count >= 12 + size else { throw SystemError("parse CRIU stats (truncated)", path, errno: EINVAL) }
        let entry = try CriuStatsEntry(serializedBytes: Array(bytes[12..<(12 + size)]))
        let d = entry.dump
        return DumpStats(freezingMs: Double(d.freezingTime) / 1000, frozenMs: Double(d.frozenTime) / 1000,
                         memdumpMs: Double(d.memdumpTime) / 1000, memwriteMs: Double(d.memwriteTime) / 1000,
                         pagesWritten: d.pagesWritten)
    }
}
