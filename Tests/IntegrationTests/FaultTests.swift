import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Faults a real store cannot be made to produce on demand at one exact step
/// (ENOSPC inside the fs snapshot or the restore), and a freeze nobody
/// attends to: each leaves the container running, thawed and consistent.
final class FaultTests: ReliabilityCase {
    /// The monitor (parent of the restored tree) killed while CRIU restores
    /// for a rollback: the rollback fails, a fresh monitor brings back the
    /// state from before the rollback, and memory and files agree; the next
    /// rollback works.
    func testMonitorKilledDuringTheRestore() throws {
        // The monitor started by run inherits the fault; the one a rollback
        // starts in its place does not.
        let c = try startCounter("it-monkill", env: ["CRSNAP_FAULT": "killafter=20:monitor.restore", "CRSNAP_TEST_HOOKS": "1"])
        let monitor = try XCTUnwrap(monitorPid(c))
        let id = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        let r = try crsnap(["rollback", id])
        XCTAssertEqual(r.status, 1, r.stderr)
        for part in ["rollback to \(id) failed", "monitor went away", "back in the state from before the rollback"] {
            XCTAssertTrue(r.stderr.contains(part), "rollback's error says \"\(part)\": \(r.stderr)")
        }
        XCTAssertNotEqual(monitorPid(c), monitor, "a new monitor runs the container")
        try assertHealthy(c, "after the monitor was killed inside the restore")
        try crsnapOK(["rollback", id])
        try assertHealthy(c, "a rollback after that")
    }

    func monitorPid(_ c: TestContainer) -> Int32? {
        guard let data = FileManager.default.contents(atPath: "\(c.dir)/state.json"),
              let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return (o["monitorPid"] as? NSNumber)?.int32Value
    }

    /// ENOSPC (CRSNAP_FAULT=enospc:STEP) while the tasks are frozen for the fs
    /// snapshot, then just before the restore of a rollback.
    func testNoSpaceInTheFsSnapshotAndInTheRestore() throws {
        let c = try startCounter("it-nospace")
        let id = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        let pids = c.namespacePids
        let before = dirFingerprint(c.dir)

        let t = try crsnap(["take", c.name], env: ["CRSNAP_FAULT": "enospc:take.fs-snapshot"])
        XCTAssertEqual(t.status, 1, t.stderr)
        XCTAssertEqual(t.stdout, "", "no id printed")
        for part in ["take \(c.name) failed", "No space left on device", "no snapshot was added; the container runs on"] {
            XCTAssertTrue(t.stderr.contains(part), "take's error says \"\(part)\": \(t.stderr)")
        }
        XCTAssertEqual(dirFingerprint(c.dir), before, "a take that hit ENOSPC changed the store")
        XCTAssertEqual(try listed(c), [id])
        try assertHealthy(c, "after ENOSPC in the fs snapshot")
        XCTAssertEqual(c.namespacePids, pids, "the same tasks run on")

        // The tree is already stopped when the restore fails: crsnap brings
        // back the state from just before the rollback (its pre-rollback
        // snapshot), so memory and files still agree and nothing is lost.
        let r = try crsnap(["rollback", id], env: ["CRSNAP_FAULT": "enospc:rollback.restore"])
        XCTAssertEqual(r.status, 1, r.stderr)
        for part in ["rollback to \(id) failed", "No space left on device", "back in the state from before the rollback"] {
            XCTAssertTrue(r.stderr.contains(part), "rollback's error says \"\(part)\": \(r.stderr)")
        }
        let ids = try listed(c)
        XCTAssertEqual(ids.count, 2, "the pre-rollback snapshot is kept: \(ids)")
        XCTAssertEqual(ids.first, id, "a failed restore never discards the snapshot it came from")
        XCTAssertEqual(try crsnap(["verify", id]).status, 0, "and it is whole")
        let pre = Int(ids.last!.split(separator: "@").last!)!
        let preLast = counterLines(c.snapshotWorkloadLog(pre)).last ?? 0
        XCTAssertGreaterThan(preLast, counterLines(c.snapshotWorkloadLog(1)).last ?? 0)
        try assertHealthy(c, "after ENOSPC in the restore")
        XCTAssertGreaterThanOrEqual(counterLines(c.workloadLog).count, preLast, "the state from before the rollback runs on, not \(id)")
        XCTAssertEqual(c.namespacePids, pids)

        // And the rollback works once there is room.
        try crsnapOK(["rollback", id])
        try assertHealthy(c, "after the rollback that had room")
    }

    /// A freeze with no CRIU attached and no crsnap to undo it (here: written
    /// by hand): the container's monitor thaws it within a few seconds.
    func testMonitorThawsAFreezeNobodyAttends() throws {
        let c = try startCounter("it-stale-freeze")
        let dirs = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup/freezer/crsnap")) ?? []
        let cg = try XCTUnwrap(dirs.first { $0.hasSuffix(".\(c.name)") }, "the container's freezer cgroup")
        let state = "/sys/fs/cgroup/freezer/crsnap/\(cg)/freezer.state"
        try "FROZEN".write(toFile: state, atomically: false, encoding: .utf8)
        XCTAssertTrue(waitFor(5) { c.freezerState == "FROZEN" }, "the cgroup froze")
        let frozenAt = Date()
        XCTAssertTrue(waitFor(15) { c.freezerState == "THAWED" }, "the monitor thawed the container")
        print("monitor thawed the stale freeze after \(String(format: "%.1f", Date().timeIntervalSince(frozenAt))) s")
        let logs = try crsnapOK(["logs", c.name])
        XCTAssertTrue(logs.contains("watchdog"), "the monitor says so in the container's log: \(logs.suffix(400))")
        try assertHealthy(c, "after the monitor's thaw")
    }
    /// Restoring images is a trust boundary: the monitor restores only its
    /// own container's snapshots into its own root, whatever a client asks.
    func testMonitorRefusesForeignImages() throws {
        let c = try startCounter("it-foreign")
        let other = try startCounter("it-foreign-other")
        try crsnapOK(["take", other.name])
        let pids = c.namespacePids
        let root = "\(c.dir)/root"
        let asks = [
            "\(other.dir)/snapshots/1/images",                       // another container's snapshot
            "\(c.dir)/snapshots/1/../../../\(other.name)/snapshots/1/images",  // a way out by ..
            "/var/tmp/crsnap-foreign-images",                        // outside the store
        ]
        for images in asks {
            let reply = try monitorRequest(c, ["restore", images, root, "", "foreign"].joined(separator: "\n"))
            XCTAssertTrue(reply.hasPrefix("err refusing to restore"), "\(images): \(reply)")
            let lazy = try monitorRequest(c, "lazy-pages\n\(images)")
            XCTAssertTrue(lazy.hasPrefix("err refusing to restore"), "lazy pages for \(images): \(lazy)")
        }
        let reply = try monitorRequest(c, ["restore", "\(c.dir)/snapshots/1/images", "/", "", "x"].joined(separator: "\n"))
        XCTAssertTrue(reply.hasPrefix("err refusing to restore"), "another root: \(reply)")
        XCTAssertEqual(c.namespacePids, pids, "the container runs on untouched")
        try assertHealthy(c, "after foreign restore requests")
    }

    /// One request on the container's monitor socket (SOCK_SEQPACKET), its reply.
    func monitorRequest(_ c: TestContainer, _ text: String) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let path = Array("\(c.dir)/monitor.sock".utf8)
        XCTAssertLessThan(path.count, MemoryLayout.size(ofValue: addr.sun_path))
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.enumerated() { raw[i] = b }
        }
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        XCTAssertEqual(ok, 0, "connect to \(c.name)'s monitor: errno \(errno)")
        let bytes = Array(text.utf8)
        XCTAssertEqual(bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }, bytes.count)
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        XCTAssertGreaterThan(n, 0, "a reply")
        return String(decoding: buf[0..<max(n, 0)], as: UTF8.self)
    }
}
