import Foundation
@testable import ProcessCR
import XCTest

/// The preflight's judgment on observed tasks, sockets and connections.
final class PreflightJudgeTests: XCTestCase {
    let root = [20: "overlay", 21: "tmpfs", 22: "proc"]
    let limits = Preflight.Limits(ghostLimit: 1000, canDumpOtherUsers: false)

    func task(_ pid: pid_t, uid: UInt32 = 0, files: [Preflight.OpenFile]) -> Preflight.Task {
        Preflight.Task(pid: pid, comm: "svc\(pid)", uids: [uid, uid, uid, uid], gids: [0, 0, 0, 0], mounts: root, files: files)
    }

    func file(_ fd: Int32?, _ link: String, mount: Int? = 20, size: UInt64 = 10) -> Preflight.OpenFile {
        Preflight.OpenFile(fd: fd, link: link, mountID: mount, allocated: size)
    }

    func testEveryBlockerIsNamedWithProcessFdAndPath() {
        let t = task(7, uid: 1000, files: [
            file(0, "/dev/null"),
            file(3, "/etc/passwd", mount: 47),                    // a mount the task does not have
            file(4, "anon_inode:[userfaultfd]", mount: 13),
            file(5, "anon_inode:[eventfd]", mount: 13),           // dumpable
            file(6, "/tmp/big (deleted)", mount: 21, size: 1001), // over the ghost limit on tmpfs
            file(7, "/tmp/small (deleted)", mount: 21, size: 1000),
            file(nil, "/var/big (deleted)", mount: 20, size: 5000), // crsnap captures these itself
            file(8, "/memfd:x (deleted)", mount: 99),              // memfd: CRIU's own kind
            file(9, "socket:[500]", mount: 8),
            file(10, "pipe:[501]", mount: 9),
            // shared anonymous and SysV memory: the kernel's own shmem mount, dumped with the memory
            Preflight.OpenFile(fd: nil, link: "/dev/zero (deleted)", mountID: 0, allocated: 4096, sharedMemory: true),
            Preflight.OpenFile(fd: nil, link: "/SYSV00000000 (deleted)", mountID: 0, allocated: 4096, sharedMemory: true),
        ])
        let f = Preflight.judge(tasks: [t], unix: [], tcp: [], limits: limits)
        XCTAssertEqual(f.map(\.kind), ["uid", "mount", "file-type", "ghost-limit"])
        XCTAssertTrue(f.allSatisfy { $0.severity == .blocker && $0.pid == 7 && $0.process == "svc7" })
        XCTAssertEqual(f[1].fd, 3)
        XCTAssertEqual(f[1].path, "/etc/passwd")
        XCTAssertEqual(f[2].path, "anon_inode:[userfaultfd]")
        XCTAssertEqual(f[3].fd, 6)
        XCTAssertTrue(f[0].detail.contains("uid 1000") && f[0].detail.contains("CAP_SYS_RESOURCE"))
        XCTAssertEqual(f[1].description, "pid 7 (svc7) fd 3 /etc/passwd: " + f[1].detail)

        let allowed = Preflight.Limits(ghostLimit: 1000, canDumpOtherUsers: true)
        XCTAssertFalse(Preflight.judge(tasks: [t], unix: [], tcp: [], limits: allowed).contains { $0.kind == "uid" })
        // A root task with a non-root gid cannot be dumped either (prlimit compares both).
        var g = task(8, files: [])
        g.gids = [0, 50, 0, 0]
        XCTAssertEqual(Preflight.judge(tasks: [g], unix: [], tcp: [], limits: limits).map(\.kind), ["uid"])
    }

    func testUnixPeersOutsideTheTreeBlockStreamsAndUnnamedDatagrams() {
        let t = task(3, files: [
            file(3, "socket:[100]", mount: 8), file(4, "socket:[101]", mount: 8),   // a pair inside
            file(5, "socket:[102]", mount: 8),                                      // stream to the host's daemon
            file(6, "socket:[103]", mount: 8),                                      // dgram to /dev/log: CRIU reconnects by name
            file(7, "socket:[104]", mount: 8),                                      // dgram to an unnamed socket
            file(8, "socket:[105]", mount: 8),                                      // unconnected
        ])
        let unix = [
            Preflight.UnixSocket(ino: 100, peer: 101, type: 1, name: ""),
            Preflight.UnixSocket(ino: 101, peer: 100, type: 1, name: ""),
            Preflight.UnixSocket(ino: 102, peer: 900, type: 1, name: ""),
            Preflight.UnixSocket(ino: 900, peer: 102, type: 1, name: "/run/daemon.sock"),
            Preflight.UnixSocket(ino: 103, peer: 901, type: 2, name: ""),
            Preflight.UnixSocket(ino: 901, peer: 0, type: 2, name: "/dev/log"),
            Preflight.UnixSocket(ino: 104, peer: 902, type: 2, name: ""),
            Preflight.UnixSocket(ino: 902, peer: 0, type: 2, name: ""),
            Preflight.UnixSocket(ino: 105, peer: 0, type: 1, name: "/srv/listen"),
        ]
        let f = Preflight.judge(tasks: [t], unix: unix, tcp: [], limits: limits)
        XCTAssertEqual(f.map(\.kind), ["unix-peer", "unix-peer"])
        XCTAssertEqual(f.map(\.fd), [5, 7])
        XCTAssertTrue(f[0].detail.contains("/run/daemon.sock") && f[0].detail.contains("stream"))
        XCTAssertTrue(f[1].detail.contains("datagram"))
    }

    func testTCPToAnOutsidePeerIsAWarningAndAPairInsideIsNothing() {
        let a = task(4, files: [file(3, "socket:[200]", mount: 8), file(4, "socket:[201]", mount: 8)])
        let b = task(5, files: [file(3, "socket:[202]", mount: 8)])
        let tcp = [
            Preflight.TCPConnection(ino: 200, local: "127.0.0.1:5000", remote: "127.0.0.1:6000"),
            Preflight.TCPConnection(ino: 202, local: "127.0.0.1:6000", remote: "127.0.0.1:5000"),
            Preflight.TCPConnection(ino: 201, local: "10.0.0.2:40000", remote: "10.0.0.9:443"),
            Preflight.TCPConnection(ino: 300, local: "10.0.0.2:22", remote: "10.0.0.7:5555"), // not the tree's
        ]
        let f = Preflight.judge(tasks: [a, b], unix: [], tcp: tcp, limits: limits)
        XCTAssertEqual(f.count, 1)
        XCTAssertEqual(f.first?.severity, .warning)
        XCTAssertEqual(f.first?.path, "tcp 10.0.0.2:40000 -> 10.0.0.9:443")
        XCTAssertEqual(f.first?.fd, 4)
    }

    func testBlockersComeBeforeWarnings() {
        let t = task(9, files: [file(3, "socket:[200]", mount: 8), file(4, "anon_inode:[io_uring]", mount: 13)])
        let f = Preflight.judge(tasks: [t], unix: [], tcp: [.init(ino: 200, local: "1.2.3.4:1", remote: "5.6.7.8:2")], limits: limits)
        XCTAssertEqual(f.map(\.severity), [.blocker, .warning])
    }

    func testProcNetAddressesReadAsTheKernelStoresThem() {
        XCTAssertEqual(Preflight.address("0100007F:1F90"), "127.0.0.1:8080")
        XCTAssertEqual(Preflight.address("00000000000000000000000001000000:0016"), "[::1]:22")
        XCTAssertEqual(Preflight.address("0000000000000000FFFF00000100007F:1F90"), "[::ffff:127.0.0.1]:8080")
        XCTAssertEqual(Preflight.address("zz"), "zz")
    }
}

/// The observation side: a shared anonymous mapping lies on the device
/// `OpenFiles.sharedMemoryDevice` names, a file on the host does not.
final class SharedMemoryDeviceTests: XCTestCase {
    func testASharedAnonymousMappingIsOnTheSharedMemoryDevice() throws {
        let device = try XCTUnwrap(OpenFiles.sharedMemoryDevice)
        let size = 2 * Int(sysconf(Int32(_SC_PAGESIZE)))
        let p = try XCTUnwrap(mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0))
        XCTAssertNotEqual(p, MAP_FAILED)
        defer { munmap(p, size) }
        let start = UInt(bitPattern: p)
        var st = stat()
        XCTAssertEqual(stat("/proc/self/map_files/\(String(start, radix: 16))-\(String(start + UInt(size), radix: 16))", &st), 0)
        XCTAssertEqual(UInt64(st.st_dev), device)
        XCTAssertEqual(stat("/proc/self/exe", &st), 0)
        XCTAssertNotEqual(UInt64(st.st_dev), device)
    }
}

/// Preflight.observe on a live process.
final class PreflightObserveTests: XCTestCase {
    /// A server opens and closes files all the time (nginx serving one): an
    /// fd that closes between its link and its fdinfo being read is gone,
    /// not "on a mount the container does not have".
    func testAFileClosedWhileObservedIsNotABlocker() throws {
        let dir = NSTemporaryDirectory() + "preflight-race-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        FileManager.default.createFile(atPath: "\(dir)/f", contents: Data("x".utf8))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = ["-c", "import os, sys\nwhile True:\n fd = os.open(sys.argv[1], os.O_RDONLY)\n for _ in range(40): pass\n os.close(fd)", "\(dir)/f"]
        try p.run()
        defer { p.terminate(); p.waitUntilExit() }
        usleep(200_000)
        var wrong: [PreflightFinding] = []
        var seen = 0
        for _ in 0..<300 {
            let o = Preflight.observe(pids: [p.processIdentifier])
            seen += o.tasks.first?.files.filter { $0.link == "\(dir)/f" }.count ?? 0
            wrong += Preflight.judge(tasks: o.tasks, unix: [], tcp: [], limits: .init(ghostLimit: 1 << 20, canDumpOtherUsers: true))
                .filter { $0.kind == "mount" }
        }
        XCTAssertGreaterThan(seen, 0, "the file was seen open at least once")
        XCTAssertEqual(wrong.map(\.detail), [], "\(wrong.count) of 300 observations called the closing file a blocker")
    }
}
