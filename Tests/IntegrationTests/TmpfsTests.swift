import Foundation
import XCTest

/// /tmp and /dev/shm as tmpfs: their contents (files closed and reopened
/// later) are captured at the frozen instant and restored.
final class TmpfsTests: XCTestCase {
    var cname = ""

    override func setUpWithError() throws {
        try Env.require()
    }

    override func tearDown() {
        if !cname.isEmpty { _ = try? crsnap(["rm", "--force", cname]) }
    }

    static let workload = """
        import os, time
        n = 0
        while True:
            n += 1
            prev = [int(open(p).read()) if os.path.exists(p) else 0 for p in ("/tmp/state", "/dev/shm/state")]
            if prev != [n - 1, n - 1]:
                print(f"ERR step {n}: tmpfs files hold {prev}, memory expects {n - 1}", flush=True)
            for p in ("/tmp/state", "/dev/shm/state"):
                with open(p, "w") as f:
                    f.write(str(n))
            if n % 5 == 0:
                print(f"step {n}", flush=True)
            time.sleep(0.02)
        """

    func steps() throws -> [Int] {
        try crsnap(["logs", cname]).stdout.split(separator: "\n").compactMap {
            $0.hasPrefix("step ") ? Int($0.dropFirst(5)) : nil
        }
    }

    func testTmpfsContentsAreRolledBackWithTheProcesses() throws {
        cname = uniqueName("it-tmpfs")
        try crsnapOK(["run", cname, "--tmpfs", "/tmp", "--tmpfs", "/dev/shm", "--", "python3", "-c", Self.workload])
        XCTAssertTrue(waitFor(20) { (try? self.steps().count) ?? 0 >= 2 }, "workload started")
        let mounts = try crsnapOK(["exec", cname, "--", "cat", "/proc/self/mounts"])
        XCTAssertTrue(mounts.contains("tmpfs /tmp tmpfs"), mounts)
        XCTAssertTrue(mounts.contains("tmpfs /dev/shm tmpfs"), mounts)
        for _ in 1...3 {
            let id = try crsnapOK(["take", cname]).trimmingCharacters(in: .whitespacesAndNewlines)
            let atTake = Int(try crsnapOK(["exec", cname, "--", "cat", "/tmp/state"])) ?? 0
            usleep(400_000)
            try crsnapOK(["rollback", id])
            let before = try steps().count
            XCTAssertTrue(waitFor(10) { (try? self.steps().count) ?? 0 > before + 3 }, "running after rollback to \(id)")
            XCTAssertGreaterThan(atTake, 0)
        }
        let errors = try crsnap(["logs", cname]).stdout.split(separator: "\n").filter { $0.hasPrefix("ERR") }
        XCTAssertTrue(errors.isEmpty, "tmpfs contents disagreed with memory: \(errors.prefix(3))")
        let bad = try crsnap(["run", "x-\(cname)", "--tmpfs", "relative", "--", "true"])
        XCTAssertEqual(bad.status, 64, bad.stderr)
        XCTAssertEqual(try crsnap(["run", "x-\(cname)", "--tmpfs", "/proc", "--", "true"]).status, 64)
        XCTAssertEqual(try crsnap(["run", "x-\(cname)", "--tmpfs", "/a/../b", "--", "true"]).status, 64)
    }
}
