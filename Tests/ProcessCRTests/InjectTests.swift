import CLibmount
import FSSnapshot
import Foundation
@testable import ProcessCR
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The ptrace step of the lock repair on a real process (a child of the
/// test, no CRIU): a stopped, multithreaded process takes locks through its
/// own descriptors, and then runs on as if nothing had happened — its
/// registers, code and stack put back.
final class InjectTests: XCTestCase {
    /// A child that computes and reports forever; its first line names the
    /// descriptor of `file` it holds.
    static let child = """
    import os, sys, threading
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    print("fd", fd, flush=True)
    def spin():
        while True:
            sum(range(100))
    threading.Thread(target=spin, daemon=True).start()
    n = 0
    while True:
        n += 1
        s = sum(range(1000))
        if n % 200 == 0:
            print(n, s, flush=True)
    """

    var pid: pid_t = 0
    var out: FileHandle?
    var path = ""

    override func setUpWithError() throws {
        path = NSTemporaryDirectory() + "crsnap-inject-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        var fds: [Int32] = [0, 0]
        try Sys.check("pipe", "child output") { crsnap_pipe2(&fds, O_CLOEXEC) }
        let null = try Sys.open("/dev/null", O_RDWR)
        defer { Sys.close(null) }
        // posix_spawn, not Foundation's Process: nothing else may wait for this child.
        pid = Program.spawn(path: "/usr/bin/python3", argv: ["python3", "-c", Self.child, path],
                            env: ["PATH": "/usr/bin:/bin"], fdmap: [null, fds[1], null], newSession: false)
        Sys.close(fds[1])
        XCTAssertGreaterThan(pid, 1)
        out = FileHandle(fileDescriptor: fds[0], closeOnDealloc: true)
    }

    override func tearDown() {
        if pid > 1 {
            kill(pid, SIGKILL)
            _ = Program.wait(pid)
        }
        try? FileManager.default.removeItem(atPath: path)
    }

    var buffered = ""
    func nextLine() -> String {
        while !buffered.contains("\n") {
            guard let data = try? out?.read(upToCount: 4096), !data.isEmpty else { return "" }
            buffered += String(decoding: data, as: UTF8.self)
        }
        let line = String(buffered[..<buffered.firstIndex(of: "\n")!])
        buffered.removeSubrange(...buffered.firstIndex(of: "\n")!)
        return line
    }

    func stopped(_ body: () throws -> Void) throws {
        kill(pid, SIGSTOP)
        try Proc.waitStopped(pid, timeout: 10)
        try body()
        // Back in the group stop once detached (the kernel puts it back).
        XCTAssertNoThrow(try Proc.waitStopped(pid, timeout: 2), "the process stays stopped until it is continued")
        usleep(100_000)
        XCTAssertEqual(Proc.state(pid), "T", "the process stays stopped until it is continued")
        kill(pid, SIGCONT)
    }

    /// It runs on, computing right, and its counter goes on where it was.
    func checkRunsOn() {
        var last = 0
        for _ in 0..<5 {
            let w = nextLine().split(separator: " ")
            XCTAssertEqual(w.count, 2)
            XCTAssertEqual(w.last, "499500", "the computation is right after the injection")
            let n = Int(w.first ?? "") ?? 0
            XCTAssertGreaterThan(n, last)
            last = n
        }
    }

    func testAStoppedProcessTakesLocksThroughItsOwnDescriptor() throws {
        let w = nextLine().split(separator: " ")
        guard w.count == 2, w[0] == "fd", let fd = Int32(w[1]) else { return XCTFail("child said \(w)") }
        _ = nextLine()
        let locks = [FileLock(kind: .posix, write: false, pid: 1, fd: fd, start: 10, length: 1),
                     FileLock(kind: .posix, write: true, pid: 1, fd: fd, start: 100, length: 10),
                     FileLock(kind: .posix, write: true, pid: 1, fd: fd, start: 4096, length: 0),
                     FileLock(kind: .flock, write: true, pid: 1, fd: fd)]
        try stopped {
            XCTAssertEqual(try LockRepair.takeInside(pid, locks), [0, 0, 0, 0])
        }
        let held = FileLocks.held(pid: pid, fd: fd)
        for l in locks { XCTAssertTrue(held.contains(where: l.isHeld), "\(l) in \(held)") }
        checkRunsOn()
    }

    func testALockSomebodyElseHoldsIsRefusedAndTheProcessIsUnharmed() throws {
        let w = nextLine().split(separator: " ")
        guard w.count == 2, let fd = Int32(w[1]) else { return XCTFail("child said \(w)") }
        _ = nextLine()
        // This test process holds bytes 200-209 (an OFD lock conflicts with
        // another process's POSIX lock like a POSIX lock would).
        let mine = try Sys.open(path, O_RDWR)
        defer { Sys.close(mine) }
        var fl = flock()
        fl.l_type = Int16(F_WRLCK)
        fl.l_whence = Int16(SEEK_SET)
        fl.l_start = 200
        fl.l_len = 10
        XCTAssertEqual(fcntl(mine, 37 /* F_OFD_SETLK */, &fl), 0)
        try stopped {
            let errs = try LockRepair.takeInside(pid, [FileLock(kind: .posix, write: true, pid: 1, fd: fd, start: 200, length: 10),
                                                      FileLock(kind: .posix, write: false, pid: 1, fd: fd, start: 0, length: 1)])
            XCTAssertEqual(errs, [EAGAIN, 0])
        }
        XCTAssertEqual(FileLocks.held(pid: pid, fd: fd), [HeldLock(kind: "POSIX", write: false, start: 0, end: 0)])
        checkRunsOn()
    }

    func testABadDescriptorIsTheProcessesOwnAnswer() throws {
        _ = nextLine()
        _ = nextLine()
        try stopped {
            XCTAssertEqual(try LockRepair.takeInside(pid, [FileLock(kind: .posix, write: true, pid: 1, fd: 999)]), [EBADF])
        }
        checkRunsOn()
    }

    func testAProcessThatIsNotThereIsAnError() {
        XCTAssertThrowsError(try LockRepair.takeInside(999_999, [FileLock(kind: .posix, write: true, pid: 1, fd: 3)]))
    }
}
