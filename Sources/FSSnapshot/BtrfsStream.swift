import CLibmount
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A program that reads from or writes to crsnap through a pipe, its
/// stderr kept for the error message (read on a thread of its own, so a
/// chatty program cannot block on a full pipe).
public final class PipedProgram {
    public enum Direction { case readFromIt, writeToIt }

    public let argv: [String]
    let pid: pid_t
    /// Our end of the pipe: read its stdout, or write its stdin.
    public private(set) var fd: Int32
    var stderrText = ""
    let stderrDone = DispatchSemaphore(value: 0)
    var reaped = false

    public init(_ argv: [String], _ direction: Direction) throws {
        guard let path = Program.find(argv[0]) else { throw SystemError("exec", argv[0], errno: ENOENT) }
        var data: [Int32] = [0, 0], err: [Int32] = [0, 0]
        try Sys.check("pipe", argv[0]) { crsnap_pipe2(&data, O_CLOEXEC) }
        try Sys.check("pipe", argv[0]) { crsnap_pipe2(&err, O_CLOEXEC) }
        let null = try Sys.open("/dev/null", O_RDWR)
        defer { Sys.close(null) }
        let fdmap = direction == .readFromIt ? [null, data[1], err[1]] : [data[0], null, err[1]]
        let pid = Program.spawn(path: path, argv: argv, env: ProcessInfo.processInfo.environment, fdmap: fdmap, newSession: false)
        let spawnErrno = errno
        Sys.close(err[1])
        Sys.close(direction == .readFromIt ? data[1] : data[0])
        let ours = direction == .readFromIt ? data[0] : data[1]
        guard pid > 0 else {
            Sys.close(ours)
            Sys.close(err[0])
            throw SystemError("exec", path, errno: spawnErrno)
        }
        self.argv = argv
        self.pid = pid
        self.fd = ours
        let errFD = err[0]
        Thread.detachNewThread { [self] in
            self.stderrText = String(decoding: Sys.readToEnd(errFD), as: UTF8.self)
            Sys.close(errFD)
            self.stderrDone.signal()
        }
    }

    /// Closes our end and waits; a non-zero exit is a `Program.Failure`
    /// carrying what it wrote on stderr.
    public func finish() throws {
        closeOurEnd()
        guard !reaped else { return }
        reaped = true
        let status = Program.wait(pid)
        stderrDone.wait()
        if status != 0 { throw Program.Failure(argv: argv, status: status, output: stderrText) }
    }

    /// Ends it (SIGKILL) and reaps it: after a failure elsewhere.
    public func abort() {
        closeOurEnd()
        guard !reaped else { return }
        reaped = true
        if pid > 1 { kill(pid, SIGKILL) }
        _ = Program.wait(pid)
        stderrDone.wait()
    }

    /// What it said on stderr so far (complete after finish or abort).
    public var stderr: String { stderrText }

    func closeOurEnd() {
        if fd >= 0 { Sys.close(fd) }
        fd = -1
    }

    deinit { abort() }
}

/// btrfs send and receive through Debian's `btrfs` program (argv, never a
/// shell): libbtrfsutil has neither, and receive is a user-space replay of
/// the stream that btrfs-progs keeps correct.
public enum BtrfsStream {
    /// `btrfs send` of the read-only subvolume `subvolume`: its stream on
    /// the returned program's `fd`. With `parent` (read-only, present on the
    /// receiving side too) only what changed since it is sent; `cloneSources`
    /// are more subvolumes both sides hold whose extents may be referred to.
    public static func send(_ subvolume: String, parent: String? = nil, cloneSources: [String] = []) throws -> PipedProgram {
        var argv = ["btrfs", "send", "-q"]
        if let parent { argv += ["-p", parent] }
        for c in cloneSources { argv += ["-c", c] }
        return try PipedProgram(argv + [subvolume], .readFromIt)
    }

    /// `btrfs receive` into the directory `dir`: write a send stream into the
    /// returned program's `fd`, then `finish()`. The received subvolume is
    /// read-only and records the sender's uuid as its received uuid; an
    /// incremental stream needs its parent in the same filesystem (found by
    /// that received uuid).
    public static func receive(into dir: String) throws -> PipedProgram {
        try PipedProgram(["btrfs", "receive", "-q", "-e", dir], .writeToIt)
    }
}
