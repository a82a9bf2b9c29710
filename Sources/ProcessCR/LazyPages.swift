import CLibmount
import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// CRIU's lazy-pages daemon (`criu lazy-pages`) for one restore. A restore
/// with `lazyPages` registers the restored tasks' private anonymous memory
/// with userfaultfd and hands the descriptors to this process over the
/// socket `lazy-pages.socket` in the work directory both share; the daemon
/// then fills that memory from the images, a page as a task touches it and
/// the rest in the background once the restore has finished.
///
/// It exits 0 when every page is in. Any other end leaves pages missing, and
/// once its userfaultfd is closed the kernel fills a missing page with zeros
/// on the next touch: a tree whose daemon did not exit 0 must not run on.
public final class LazyPagesDaemon {
    public let pid: pid_t
    public let workDir: String
    public static let log = "lazy-pages.log"
    public var logPath: String { "\(workDir)/\(LazyPagesDaemon.log)" }
    private var ended: Int32?
    private var pidfd: Int32 = -1

    /// Starts the daemon on `imagesDir` and waits until it listens (CRIU's
    /// --status-fd), at most `readyTimeout` seconds. `workDir` must exist and
    /// is where the socket and the log go; the restore must use it too.
    public init(criu: Criu, imagesDir: String, workDir: String, readyTimeout: Double = 10) throws {
        self.workDir = workDir
        var fds: [Int32] = [0, 0]
        try Sys.check("pipe", "criu lazy-pages status") { crsnap_pipe2(&fds, O_CLOEXEC) }
        let null = try Sys.open("/dev/null", O_RDWR)
        defer { Sys.close(null) }
        let argv = [criu.binary, "lazy-pages", "--images-dir", imagesDir, "--work-dir", workDir,
                    "--log-file", LazyPagesDaemon.log, "-v2", "--status-fd", "3"]
        let child = Program.spawn(path: criu.binary, argv: argv,
                                  env: Criu.environment,
                                  fdmap: [null, null, null, fds[1]], newSession: false)
        let spawnErrno = errno
        Sys.close(fds[1])
        defer { Sys.close(fds[0]) }
        guard child > 0 else { throw SystemError("spawn", "\(criu.binary) lazy-pages", errno: spawnErrno) }
        pid = child
        // CRIU writes one byte and closes the descriptor once it listens; an
        // end of file before that byte means it gave up.
        var p = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
        var byte: UInt8 = 1
        var n = -1
        if Glibc.poll(&p, 1, Int32(readyTimeout * 1000)) == 1 {
            n = Glibc.read(fds[0], &byte, 1)
        }
        guard n == 1 else {
            kill()
            throw CriuError(request: "lazy-pages", errno: 0,
                            message: n == 0 ? "the daemon exited before it was ready" : "the daemon was not ready within \(Int(readyTimeout)) s",
                            logPath: logPath, logErrors: CriuLog.errors(at: logPath))
        }
    }

    /// Its exit status once it has ended (128 + signal for a signal), nil
    /// while it runs. Never blocks.
    public func exitStatus() -> Int32? {
        if let ended { return ended }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid {
            ended = Program.exitCode(status)
        } else if r < 0 && errno == ECHILD {
            ended = -1
        }
        return ended
    }

    /// Waits until it ends or `timeout` seconds have passed, calling `tick`
    /// about every `interval` seconds meanwhile (the caller's other duties);
    /// the exit status, or nil on timeout.
    public func wait(timeout: Double, interval: Double = 0.005, tick: () -> Void = {}) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let s = exitStatus() { return s }
            if Date() >= deadline { return nil }
            tick()
            usleep(UInt32(interval * 1_000_000))
        }
    }

    /// CRIU 4.2's daemon loses a page fault whose copy the kernel refuses
    /// with EAGAIN, as it does while an event of the task (a madvise that
    /// drops pages, an munmap) waits unread: it logs "copy: mcopy_rc:-11",
    /// puts the page back among those to send and goes on, and the thread
    /// sleeps until the background transfer reaches that page. Seen with
    /// redis at 2 GiB: its first answer came 0.8-1 s after the restore
    /// instead of 20 ms. Waking every thread that waits on a fault in the
    /// tasks (UFFDIO_WAKE on a copy of each of the daemon's userfaultfds)
    /// makes each fault again: a page still missing raises a fresh fault,
    /// which the daemon serves; a page that arrived meanwhile raises none.
    /// Cheap enough to do every few milliseconds while the daemon runs.
    public func wakeWaiters() {
        guard exitStatus() == nil else { return }
        if pidfd < 0 {
            pidfd = crsnap_pidfd_open(pid)
            if pidfd < 0 { return }
        }
        for fd in userfaultfds() {
            _ = crsnap_uffd_wake(pidfd, fd, LazyPagesDaemon.userStart, LazyPagesDaemon.userEnd - LazyPagesDaemon.userStart)
        }
    }

    /// The lowest address a task may map (vm.mmap_min_addr) and the top of
    /// an x86-64 task's address space: UFFDIO_WAKE's range must lie between.
    static let userStart: UInt64 = {
        let text = (try? Sys.readText("/proc/sys/vm/mmap_min_addr")) ?? ""
        let v = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 65536
        return max(v, 4096)
    }()
    static let userEnd: UInt64 = 0x7fff_ffff_f000

    /// The daemon's descriptors that are userfaultfds (one a restored task).
    func userfaultfds() -> [Int32] {
        let dir = "/proc/\(pid)/fd"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        return names.compactMap { name in
            guard let fd = Int32(name), Proc.fdTarget(path: "\(dir)/\(name)") == "anon_inode:[userfaultfd]" else { return nil }
            return fd
        }
    }

    /// SIGKILL, and reaped.
    public func kill() {
        if pidfd >= 0 {
            Sys.close(pidfd)
            pidfd = -1
        }
        guard exitStatus() == nil else { return }
        try? Safety.signal(pid, SIGKILL)
        ended = Program.wait(pid)
    }

    /// What went wrong, for a status other than 0.
    public func failure(status: Int32?) -> CriuError {
        let what: String
        switch status {
        case nil: what = "did not finish"
        case let s? where s > 128: what = "was killed by signal \(s - 128)"
        case let s?: what = "exited with status \(s)"
        }
        return CriuError(request: "lazy-pages", errno: 0,
                         message: "the lazy-pages daemon (pid \(pid)) \(what) before all of the restored memory was back",
                         logPath: logPath, logErrors: CriuLog.errors(at: logPath))
    }

    deinit { kill() }
}
