import FSSnapshot
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// export → import between two stores on two btrfs filesystems (two
/// loop-mounted images: on one filesystem btrfs receive could find a parent
/// by its own uuid and hide a mistake), then resume: memory == files there.
final class TransferTests: XCTestCase {
    var started: [(name: String, store: String)] = []
    var files: [String] = []
    var store2: String { Env.store2 }

    override func setUpWithError() throws {
        try Env.requireTwoStores()
        var a = stat(), b = stat()
        XCTAssertEqual(stat(Env.store!, &a), 0)
        XCTAssertEqual(stat(store2, &b), 0)
        XCTAssertNotEqual(a.st_dev, b.st_dev, "the two test stores must be two filesystems")
    }

    override func tearDown() {
        for (name, store) in started { _ = try? crsnap(["rm", "--force", name], store: store) }
        for f in files { unlink(f) }
    }

    func scratch(_ name: String) -> String {
        let path = "\(Env.store!)/../\(uniqueName(name))"
        files.append(path)
        return path
    }

    func inStore2(_ args: [String], env: [String: String] = [:]) throws -> Result {
        try crsnap(args, env: env, store: store2)
    }

    /// The counter workload on the test root, running a few steps.
    /// `overlay`: over the host's root, else on the test root (a subvolume).
    func startCounter(_ prefix: String, overlay: Bool = false) throws -> TestContainer {
        let name = uniqueName(prefix)
        guard let rootfs = Env.rootfs else { throw XCTSkip("no test rootfs") }
        try crsnapOK(["run", name] + (overlay ? [] : ["--rootfs", rootfs]) + ["--", "python3", "-c", workloadText("counter.py")])
        started.append((name, Env.store!))
        let c = TestContainer(name: name, overlay: overlay)
        XCTAssertTrue(waitFor(30) { counterLines(c.workloadLog).count >= 5 }, "workload in \(name) did not start")
        return c
    }

    func take(_ c: TestContainer) throws -> Int {
        let id = try crsnapOK(["take", c.name]).trimmingCharacters(in: .whitespacesAndNewlines)
        return Int(id.split(separator: "@").last!)!
    }

    func testExportImportResumeOnAnotherStoreAgreesSubvolumeRoot() throws {
        try exportImportResume(overlay: false)
    }

    func testExportImportResumeOnAnotherStoreAgreesOverlayRoot() throws {
        try exportImportResume(overlay: true)
    }

    func exportImportResume(overlay: Bool) throws {
        let c = try startCounter("xfer", overlay: overlay)
        let n = try take(c)
        let atSnapshot = counterLines(c.snapshotWorkloadLog(n)).last ?? 0
        XCTAssertGreaterThan(atSnapshot, 0)
        let archive = scratch("xfer.tar.zst")
        let out = try crsnapOK(["export", "\(c.name)@\(n)", "-o", archive, "--compress", "zstd", "--json"])
        let e = jsonObject(out)
        XCTAssertEqual(e["compressed"] as? Bool, true)
        let written = (e["bytes"] as? NSNumber)?.uint64Value ?? 0
        XCTAssertEqual(UInt64((try? FileManager.default.attributesOfItem(atPath: archive)[.size] as? NSNumber)??.uint64Value ?? 0), written)
        XCTAssertGreaterThan((e["fs_bytes"] as? NSNumber)?.uint64Value ?? 0, 0)
        XCTAssertGreaterThan((e["images_bytes"] as? NSNumber)?.uint64Value ?? 0, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: archive + ".partial"), "no temporary file left")
        try crsnapOK(["stop", c.name])

        let imp = try inStore2(["import", archive, "--json"])
        XCTAssertEqual(imp.status, 0, imp.stderr)
        started.append((c.name, store2))
        let i = jsonObject(imp.stdout)
        XCTAssertEqual(i["id"] as? String, "\(c.name)@\(n)")
        XCTAssertEqual(i["from"] as? String, "\(c.name)@\(n)")
        XCTAssertEqual(i["created_container"] as? Bool, true)
        XCTAssertEqual(try inStore2(["verify", "\(c.name)@\(n)"]).status, 0, "the imported snapshot verifies")
        let manifest = try String(contentsOfFile: "\(store2)/containers/\(c.name)/snapshots/\(n)/manifest.json", encoding: .utf8)
        XCTAssertTrue(manifest.contains("\"received\""), "the manifest records where it came from")

        // Resumed on the other store, memory carries on from the files.
        let r = try inStore2(["resume", c.name])
        XCTAssertEqual(r.status, 0, r.stderr)
        let moved = TestContainer(name: c.name, overlay: overlay, store: store2)
        XCTAssertTrue(waitFor(15) { (counterLines(moved.workloadLog).last ?? 0) > atSnapshot + 5 }, "the workload did not carry on in the other store")
        let lines = counterLines(moved.workloadLog)
        XCTAssertEqual(lines, Array(1...(lines.last ?? 0)), "the log in the other store is 1, 2, ..., n: memory and files agree")
        let logs = try inStore2(["logs", c.name]).stdout
        XCTAssertFalse(logs.contains("ERR") || logs.contains("Traceback"), "workload reported: \(logs.suffix(600))")
        // The source store is untouched: its container is stopped there, its snapshot still listed.
        XCTAssertEqual(try crsnap(["verify", "\(c.name)@\(n)"]).status, 0)
    }

    func assertImportRefused(_ archive: String, saying: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try inStore2(["import", archive, "--as", "tampered"])
        XCTAssertEqual(r.status, 1, "import of a damaged archive fails: \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.contains(saying), "says \"\(saying)\": \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.contains("nothing was changed"), r.stderr, file: file, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(store2)/containers/tampered"), "nothing listed", file: file, line: line)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: "\(store2)/containers")) ?? []
        XCTAssertFalse(left.contains { $0.hasPrefix(".import-") }, "no staging left: \(left)", file: file, line: line)
    }

    func testDamagedArchivesAreRefusedNamingWhatIsWrong() throws {
        let c = try startCounter("xfer-bad")
        let n = try take(c)
        let archive = scratch("xfer-bad.tar")
        try crsnapOK(["export", "\(c.name)@\(n)", "-o", archive])
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: archive)))
        let entries = tarEntries(bytes)
        XCTAssertNotNil(entries["fs.btrfs.000000"])
        XCTAssertEqual(Array(entries.keys.filter { $0.hasPrefix("images/pages-") }.isEmpty ? [] : [1]), [1], "pages images in \(entries.keys.sorted())")
        let damaged = scratch("xfer-damaged.tar")
        for victim in [entries.keys.first { $0.hasPrefix("images/pages-") }!, "fs.btrfs.000000", "manifest.json"] {
            var copy = bytes
            let e = entries[victim]!
            copy[e.offset + e.size / 2] ^= 0x20
            try Data(copy).write(to: URL(fileURLWithPath: damaged))
            try assertImportRefused(damaged, saying: "\(victim) does not match its checksum")
        }
        // Cut short, anywhere.
        for cut in [bytes.count / 3, bytes.count - 2048] {
            try Data(bytes[..<cut]).write(to: URL(fileURLWithPath: damaged))
            try assertImportRefused(damaged, saying: "cut short")
        }
        // Not an archive at all.
        try Data("hello\n".utf8).write(to: URL(fileURLWithPath: damaged))
        try assertImportRefused(damaged, saying: "cut short")
    }

    func testKilledImportListsNothingAndTheNextImportCleansUp() throws {
        let c = try startCounter("xfer-kill")
        let n = try take(c)
        let archive = scratch("xfer-kill.tar")
        let e = jsonObject(try crsnapOK(["export", "\(c.name)@\(n)", "-o", archive, "--json"]))
        XCTAssertGreaterThan((e["fs_bytes"] as? NSNumber)?.intValue ?? 0, 8 << 20, "more than one chunk of files, to be killed between two")
        for point in ["import.receiving", "import.received"] {
            let r = try inStore2(["import", archive], env: ["CRSNAP_FAULT": "kill:\(point)"])
            XCTAssertEqual(r.status, 137, "killed at \(point): \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(store2)/containers/\(c.name)"), "killed at \(point): nothing listed")
            XCTAssertFalse(try inStore2(["ps"]).stdout.contains(c.name))
            let left = (try? FileManager.default.contentsOfDirectory(atPath: "\(store2)/containers")) ?? []
            XCTAssertTrue(left.contains { $0.hasPrefix(".import-") && !$0.hasSuffix(".lock") }, "killed at \(point): its staging is left for the next import: \(left)")
        }
        let doctor = try inStore2(["doctor"])
        XCTAssertTrue((doctor.stdout + doctor.stderr).contains("interrupted import"), "doctor names the leftovers: \(doctor.stdout)")
        let r = try inStore2(["import", archive])
        XCTAssertEqual(r.status, 0, r.stderr)
        started.append((c.name, store2))
        let left = (try? FileManager.default.contentsOfDirectory(atPath: "\(store2)/containers")) ?? []
        XCTAssertFalse(left.contains { $0.hasPrefix(".import-") }, "the next import removed what the killed ones left: \(left)")
        XCTAssertEqual(try inStore2(["verify", "\(c.name)@\(n)"]).status, 0)
    }

    func testSecondSnapshotJoinsTheSameContainerAndConflictsAreRefused() throws {
        let c = try startCounter("xfer-two")
        let first = try take(c)
        let a1 = scratch("xfer-1.tar"), a2 = scratch("xfer-2.tar")
        try crsnapOK(["export", "\(c.name)@\(first)", "-o", a1])
        let second = try take(c)
        try crsnapOK(["export", "\(c.name)@\(second)", "-o", a2])

        XCTAssertEqual(try inStore2(["import", a1]).status, 0)
        started.append((c.name, store2))
        // The same container: the second snapshot joins it.
        let r2 = try inStore2(["import", a2, "--json"])
        XCTAssertEqual(r2.status, 0, r2.stderr)
        XCTAssertEqual(jsonObject(r2.stdout)["created_container"] as? Bool, false)
        let listed = jsonObjects(try inStore2(["list", c.name, "--json"]).stdout).compactMap { $0["id"] as? String }
        XCTAssertEqual(listed, ["\(c.name)@\(first)", "\(c.name)@\(second)"])
        // Again: refused, nothing changed.
        let again = try inStore2(["import", a2])
        XCTAssertEqual(again.status, 4, again.stderr)
        XCTAssertTrue(again.stderr.contains("already has a snapshot"), again.stderr)
        // Another container of the same name: refused, --as works.
        guard let rootfs = Env.rootfs else { throw XCTSkip("no test rootfs") }
        let other = uniqueName("xfer-other")
        XCTAssertEqual(try inStore2(["run", other, "--rootfs", rootfs, "--", "sleep", "1000"]).status, 0)
        started.append((other, store2))
        let otherArchive = scratch("xfer-other.tar")
        try crsnapOK(["run", other, "--rootfs", rootfs, "--", "sleep", "1000"])
        started.append((other, Env.store!))
        try crsnapOK(["take", other])
        try crsnapOK(["export", "\(other)@1", "-o", otherArchive])
        let clash = try inStore2(["import", otherArchive])
        XCTAssertEqual(clash.status, 4, clash.stderr)
        XCTAssertTrue(clash.stderr.contains("another container named") && clash.stderr.contains("--as"), clash.stderr)
        let renamed = uniqueName("xfer-renamed")
        let asR = try inStore2(["import", otherArchive, "--as", renamed])
        XCTAssertEqual(asR.status, 0, asR.stderr)
        started.append((renamed, store2))
        XCTAssertEqual(try inStore2(["verify", "\(renamed)@1"]).status, 0)
        XCTAssertEqual(try inStore2(["resume", renamed]).status, 0)
        XCTAssertTrue(try inStore2(["ps", "--json"]).stdout.contains(renamed))

        // Bad input changes nothing.
        let cases: [([String], Int32, String)] = [
            (["export", "\(c.name)@\(first)", "-o", a1], 4, "exists"),
            (["export", "\(c.name)@\(first)", "-o", "/nonexistent-dir/x.tar"], 64, "not a directory"),
            (["export", "\(c.name)@\(first)", "-o", a1 + ".x", "--compress", "gzip"], 64, "--compress"),
            (["export", "\(c.name)@99", "-o", a1 + ".x"], 3, "no snapshot"),
            (["export", "\(c.name)@\(first)", "-o", "-", "--json"], 64, "--json"),
            (["import", "/nonexistent-archive.tar"], 3, "no file"),
            (["import", a1, "--as", ".hidden"], 64, "must not start with a dot"),
        ]
        for (args, status, text) in cases {
            let r = try crsnap(args)
            XCTAssertEqual(r.status, status, "crsnap \(args.joined(separator: " ")): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(text), "crsnap \(args.joined(separator: " ")) says \"\(text)\": \(r.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: a1 + ".x"))
    }

    /// `crsnap send ARGS | crsnap receive ARGS` (store 1 to store 2), two
    /// processes joined by a pipe, no shell: (send's stderr, receive's result).
    func sendReceive(_ send: [String], _ receive: [String]) throws -> (sendStatus: Int32, sendStderr: String, receive: Result) {
        let sender = Process()
        sender.executableURL = URL(fileURLWithPath: Env.binary)
        sender.arguments = send
        sender.environment = ProcessInfo.processInfo.environment.merging(["CRSNAP_STORE": Env.store!]) { $1 }
        let pipe = Pipe(), senderErr = Pipe()
        sender.standardOutput = pipe
        sender.standardError = senderErr
        sender.standardInput = FileHandle.nullDevice
        let receiver = Process()
        receiver.executableURL = URL(fileURLWithPath: Env.binary)
        receiver.arguments = receive
        receiver.environment = ProcessInfo.processInfo.environment.merging(["CRSNAP_STORE": store2]) { $1 }
        let out = Pipe(), err = Pipe()
        receiver.standardInput = pipe
        receiver.standardOutput = out
        receiver.standardError = err
        try sender.run()
        try receiver.run()
        // Our copies of the pipe's ends go, so each side sees the other end.
        try pipe.fileHandleForReading.close()
        try pipe.fileHandleForWriting.close()
        final class Box: @unchecked Sendable { var data = Data() }
        let sErr = Box(), rOut = Box()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async { sErr.data = senderErr.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        group.enter()
        DispatchQueue.global().async { rOut.data = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        let rErr = err.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        sender.waitUntilExit()
        receiver.waitUntilExit()
        return (sender.terminationStatus, String(decoding: sErr.data, as: UTF8.self),
                Result(status: receiver.terminationStatus, stdout: String(decoding: rOut.data, as: UTF8.self),
                       stderr: String(decoding: rErr, as: UTF8.self)))
    }

    func testIncrementalSendMovesOnlyWhatChangedAndResumes() throws {
        let c = try startCounter("xfer-inc")
        // 32 MiB in the container's files that do not change between the two snapshots.
        try crsnapOK(["exec", c.name, "--", "python3", "-c", "import os; open('/var/big', 'wb').write(os.urandom(32 << 20))"])
        let first = try take(c)
        usleep(500_000)
        let second = try take(c)
        let atSecond = counterLines(c.snapshotWorkloadLog(second)).last ?? 0

        // Without the parent on the other side: refused before anything is written.
        let orphan = uniqueName("xfer-orphan")
        let refused = try sendReceive(["send", "\(c.name)@\(second)", "--parent", "\(c.name)@\(first)"], ["receive", "--as", orphan])
        XCTAssertEqual(refused.receive.status, 3, refused.receive.stderr)
        XCTAssertTrue(refused.receive.stderr.contains("does not hold"), refused.receive.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(store2)/containers/\(orphan)"))

        let full = try sendReceive(["send", "\(c.name)@\(first)", "--json"], ["receive", "--json"])
        XCTAssertEqual(full.sendStatus, 0, full.sendStderr)
        XCTAssertEqual(full.receive.status, 0, full.receive.stderr)
        started.append((c.name, store2))
        let inc = try sendReceive(["send", "\(c.name)@\(second)", "--parent", "\(c.name)@\(first)", "--json"], ["receive", "--json"])
        XCTAssertEqual(inc.sendStatus, 0, inc.sendStderr)
        XCTAssertEqual(inc.receive.status, 0, inc.receive.stderr)
        let fullSent = jsonObject(full.sendStderr), incSent = jsonObject(inc.sendStderr)
        let incReceived = jsonObject(inc.receive.stdout)
        func bytes(_ o: [String: Any], _ k: String) -> UInt64 { (o[k] as? NSNumber)?.uint64Value ?? 0 }
        XCTAssertEqual(incSent["parent"] as? String, "\(c.name)@\(first)")
        XCTAssertEqual(incReceived["parent"] as? String, "\(c.name)@\(first)")
        XCTAssertEqual(bytes(incSent, "bytes"), bytes(incReceived, "bytes"), "what was sent is what was received")
        XCTAssertGreaterThan(bytes(fullSent, "fs_bytes"), 32 << 20, "a full send carries the 32 MiB file")
        XCTAssertLessThan(bytes(incSent, "fs_bytes") * 20, bytes(fullSent, "fs_bytes"),
                          "the incremental filesystem stream is a small part of the full one: \(bytes(incSent, "fs_bytes")) vs \(bytes(fullSent, "fs_bytes"))")
        XCTAssertLessThan(bytes(incSent, "bytes"), bytes(fullSent, "bytes") - (32 << 20), "the whole incremental archive is smaller by at least the unchanged file")
        XCTAssertLessThan(bytes(incSent, "images_bytes") * 2, bytes(fullSent, "images_bytes"),
                          "the images travel as the blocks that changed since the parent's: \(bytes(incSent, "images_bytes")) vs \(bytes(fullSent, "images_bytes"))")
        XCTAssertEqual(bytes(incSent, "images_bytes"), bytes(incReceived, "images_bytes"))

        // The incremental snapshot is whole on the other side: its files and processes come back together.
        XCTAssertEqual(try inStore2(["verify", "\(c.name)@\(second)"]).status, 0)
        try crsnapOK(["stop", c.name])
        let r = try inStore2(["resume", c.name])
        XCTAssertEqual(r.status, 0, r.stderr)
        let moved = TestContainer(name: c.name, overlay: false, store: store2)
        XCTAssertTrue(waitFor(15) { (counterLines(moved.workloadLog).last ?? 0) > atSecond + 5 })
        let lines = counterLines(moved.workloadLog)
        XCTAssertEqual(lines, Array(1...(lines.last ?? 0)), "memory and files agree after resuming the incremental snapshot")
        let big = (try? FileManager.default.attributesOfItem(atPath: "\(moved.filesDir)/var/big")[.size] as? NSNumber)??.intValue
        XCTAssertEqual(big, 32 << 20, "the unchanged file came with the parent")
    }
}
