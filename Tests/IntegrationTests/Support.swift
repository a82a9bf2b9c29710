import FSSnapshot
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The integration suite drives the real `crsnap` binary against real CRIU,
/// btrfs, namespaces and cgroups. Without them it skips loudly; under CI=true
/// a missing requirement is a failure, never a skip.
enum Env {
    static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
    static var store: String? { ProcessInfo.processInfo.environment["CRSNAP_TEST_STORE"] }
    static var rootfs: String? { ProcessInfo.processInfo.environment["CRSNAP_TEST_ROOTFS"] }

    /// The crsnap executable next to the test bundle.
    static var binary: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var dir = (exe as NSString).deletingLastPathComponent
        // On Linux the bundle is .build/<config>/crsnapPackageTests.xctest
        if dir.hasSuffix(".xctest") { dir = (dir as NSString).deletingLastPathComponent }
        return "\(dir)/crsnap"
    }

    /// What is missing for the integration suite, if anything.
    static func missing() -> String? {
        if geteuid() != 0 { return "not running as root" }
        guard let store else { return "CRSNAP_TEST_STORE is not set (run through Scripts/testenv)" }
        if !Btrfs.isBtrfs(store) {
            return "CRSNAP_TEST_STORE \(store) is not on btrfs"
        }
        if !FileManager.default.isExecutableFile(atPath: binary) { return "crsnap binary not found at \(binary)" }
        let paths = ["/usr/local/sbin/criu", "/usr/sbin/criu", "/usr/bin/criu"]
        if ProcessInfo.processInfo.environment["CRSNAP_CRIU"] == nil && !paths.contains(where: { FileManager.default.isExecutableFile(atPath: $0) }) {
            return "criu is not installed (Scripts/testenv installs CRIU >= 4.2)"
        }
        return nil
    }

    /// Whether this process (and so crsnap, which it starts) has
    /// CAP_SYS_RESOURCE (bit 24 of CapEff), which CRIU needs to dump a task
    /// of another user.
    static var hasSysResource: Bool {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let cap = status.split(separator: "\n").first { $0.hasPrefix("CapEff:") }?.split(separator: "\t").last
        return ((cap.flatMap { UInt64($0, radix: 16) } ?? 0) >> 24) & 1 == 1
    }

    /// The second test store, on a btrfs filesystem of its own (Scripts/testenv).
    static var store2: String { ProcessInfo.processInfo.environment["CRSNAP_TEST_STORE2"] ?? "" }

    /// `require`, and the second store: for moving snapshots between two.
    static func requireTwoStores() throws {
        try require()
        guard !store2.isEmpty, Btrfs.isBtrfs(store2) else {
            XCTFail("CRSNAP_TEST_STORE2 (a second btrfs test store) is not set up: run through Scripts/testenv")
            throw XCTSkip("no second store")
        }
    }

    static func require() throws {
        guard let why = missing() else { return }
        let message = "INTEGRATION TESTS NOT RUN: \(why)"
        FileHandle.standardError.write(Data("\n*** \(message) ***\n\n".utf8))
        if isCI {
            XCTFail("\(message) — CI=true, so this is a failure, not a skip")
            throw XCTSkip(message)
        }
        throw XCTSkip(message)
    }
}

struct Result {
    let status: Int32
    let stdout: String
    let stderr: String
}

/// Runs crsnap with argv (never a shell) against the test store.
@discardableResult
func crsnap(_ args: [String], env: [String: String] = [:], store: String? = Env.store) throws -> Result {
    var e = env
    e["CRSNAP_STORE"] = store
    // Fault injection is honoured only with the test-hook switch on.
    if env["CRSNAP_FAULT"] != nil && env["CRSNAP_TEST_HOOKS"] == nil { e["CRSNAP_TEST_HOOKS"] = "1" }
    return try runProgram(Env.binary, args, env: e)
}

/// Runs the program at `path` with argv (never a shell) and the test's
/// environment plus `env`, stdin from /dev/null, stdout and stderr read to
/// the end. `started` sees its pid while it runs. The status is the exit
/// status, or 128+N when signal N ended it.
func runProgram(_ path: String, _ args: [String], env: [String: String] = [:],
                started: ((pid_t) throws -> Void)? = nil) throws -> Result {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = FileHandle.nullDevice
    try p.run()
    defer { if p.isRunning, p.processIdentifier > 1 { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }
    // Read both to the end before waiting so a full pipe cannot block it.
    final class Box: @unchecked Sendable { var data = Data() }
    let outBox = Box()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async { outBox.data = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    try started?(p.processIdentifier)
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    let outData = outBox.data
    p.waitUntilExit()
    let status = p.terminationReason == .uncaughtSignal ? 128 + p.terminationStatus : p.terminationStatus
    return Result(status: status, stdout: String(decoding: outData, as: UTF8.self),
                  stderr: String(decoding: errData, as: UTF8.self))
}

/// Like `crsnap` but fails the test on a non-zero exit.
@discardableResult
func crsnapOK(_ args: [String], env: [String: String] = [:], file: StaticString = #filePath, line: UInt = #line) throws -> String {
    let r = try crsnap(args, env: env)
    XCTAssertEqual(r.status, 0, "crsnap \(args.joined(separator: " ")) failed: \(r.stderr)", file: file, line: line)
    if r.status != 0 { throw XCTSkip("cannot continue after a failed crsnap \(args.first ?? "")") }
    return r.stdout
}

func uniqueName(_ prefix: String) -> String {
    "\(prefix)-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
}

/// Paths of a container in the test store.
struct TestContainer {
    let name: String
    let overlay: Bool
    var store: String = Env.store!

    var dir: String { "\(store)/containers/\(name)" }
    var filesDir: String { overlay ? "\(dir)/fs/upper" : "\(dir)/fs" }
    func snapshotFiles(_ n: Int) -> String { overlay ? "\(dir)/snapshots/\(n)/fs/upper" : "\(dir)/snapshots/\(n)/fs" }

    var workloadLog: String { "\(filesDir)/var/lib/crsnap-workload/log" }
    func snapshotWorkloadLog(_ n: Int) -> String { "\(snapshotFiles(n))/var/lib/crsnap-workload/log" }

    /// The container's freezer cgroup: in the v1 freezer hierarchy, or in
    /// the cgroup2 one (containers started with CRSNAP_FREEZER=v2).
    var cgroupDir: String? {
        for root in cgroupRoots {
            let dirs = (try? FileManager.default.contentsOfDirectory(atPath: "\(root)/crsnap")) ?? []
            if let d = dirs.first(where: { $0.hasSuffix(".\(name)") }) { return "\(root)/crsnap/\(d)" }
        }
        return nil
    }

    var cgroupVersion: Int? { cgroupDir.map { FileManager.default.fileExists(atPath: "\($0)/freezer.state") ? 1 : 2 } }

    var cgroupProcs: [pid_t] {
        guard let d = cgroupDir, let text = try? String(contentsOfFile: "\(d)/cgroup.procs", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { pid_t($0) }
    }

    /// THAWED, FREEZING or FROZEN, in either cgroup version; "?" without a cgroup.
    var freezerState: String {
        guard let d = cgroupDir else { return "?" }
        func read(_ f: String) -> String {
            ((try? String(contentsOfFile: "\(d)/\(f)", encoding: .utf8)) ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
        }
        if cgroupVersion == 1 { return read("freezer.state") }
        if read("cgroup.events").split(separator: "\n").contains("frozen 1") { return "FROZEN" }
        return read("cgroup.freeze") == "1" ? "FREEZING" : "THAWED"
    }

    /// The pids the container's tasks have inside their pid namespace.
    var namespacePids: [pid_t] {
        cgroupProcs.compactMap { pid -> pid_t? in
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
            for l in status.split(separator: "\n") where l.hasPrefix("NSpid:") {
                return l.split(whereSeparator: { $0 == " " || $0 == "\t" }).last.flatMap { pid_t($0) }
            }
            return nil
        }.sorted()
    }
}

/// The v1 freezer hierarchy, then every cgroup2 mount.
var cgroupRoots: [String] {
    let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
    let v2 = mounts.split(separator: "\n").compactMap { line -> String? in
        let f = line.split(separator: " ")
        return f.count > 2 && f[2] == "cgroup2" ? String(f[1]) : nil
    }
    return ["/sys/fs/cgroup/freezer"] + v2
}

/// Mount points at or below `path` (this mount namespace).
func mountsBelow(_ path: String) -> [String] {
    let info = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
    return info.split(separator: "\n").compactMap { line -> String? in
        let f = line.split(separator: " ")
        guard f.count > 4 else { return nil }
        let target = String(f[4])
        return target == path || target.hasPrefix(path + "/") ? target : nil
    }
}

/// The complete lines of a counter log as numbers.
func counterLines(_ path: String) -> [Int] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
    var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
    if !text.hasSuffix("\n") { lines.removeLast() }  // a line still being written
    return lines.compactMap { Int($0) }
}

/// `op` (bind or connect) of socket `fd` to 127.0.0.1:`port`: its result.
func onLoopback(_ fd: Int32, port: Int, _ op: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
    onAddress(fd, "127.0.0.1", port: port, op)
}

/// `op` (bind, connect) on fd with the IPv4 address host:port.
func onAddress(_ fd: Int32, _ host: String, port: Int, _ op: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = in_port_t(UInt16(port).bigEndian)
    a.sin_addr.s_addr = inet_addr(host)
    return withUnsafePointer(to: &a) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { op(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the tests run in
/// their own network namespace).
func freeLoopbackPort() -> Int {
    for _ in 0..<50 {
        let p = Int.random(in: 20_000...40_000)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        if onLoopback(fd, port: p, { bind($0, $1, $2) }) == 0 { return p }
    }
    return 39_999
}

/// Waits until `cond` holds or `timeout` seconds pass.
func waitFor(_ timeout: Double, _ cond: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if cond() { return true }
        usleep(50_000)
    }
    return cond()
}

/// The path of a workload program in Tests/IntegrationTests/Workloads.
func workloadPath(_ name: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Workloads/\(name)").path
}

/// A workload program's text ("" when missing: the container then fails to start).
func workloadText(_ name: String) -> String {
    (try? String(contentsOfFile: workloadPath(name), encoding: .utf8)) ?? ""
}

var workloadSource: String { workloadText("counter.py") }

/// A JSON object crsnap printed; [:] when it is not one (the assertions on
/// its fields then fail).
func jsonObject(_ text: String) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
}

/// A JSON list of objects crsnap printed; [] when it is not one.
func jsonObjects(_ text: String) -> [[String: Any]] {
    (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [[String: Any]] ?? []
}

/// A listing of the store's own files and those of the named containers (and
/// of any container directory that is not another test's), to prove a
/// command changed nothing. Other tests run containers in the same store
/// concurrently (in other checkouts), so their directories are left out.
func storeFingerprint(_ containers: [String]) -> [String] {
    guard let store = Env.store, let e = FileManager.default.enumerator(atPath: store) else { return [] }
    var out: [String] = []
    while let rel = e.nextObject() as? String {
        let parts = rel.split(separator: "/")
        if parts.first == "containers", parts.count >= 2 {
            let name = String(parts[1])
            let mine = containers.contains(name)
            // Another test's container: not this test's business.
            if !mine && name.hasPrefix("it-") { e.skipDescendants(); continue }
        }
        // Live files the running containers keep changing are not the store's state.
        if rel.contains("/fs/") || rel.hasSuffix("/log") || rel.hasSuffix("/monitor.log") || rel.hasSuffix("state.json") { continue }
        if rel.hasSuffix("/fs") { e.skipDescendants() }
        out.append(rel)
    }
    return out.sorted()
}

/// (offset of the content, size) of each entry of a plain tar file.
func tarEntries(_ bytes: [UInt8]) -> [String: (offset: Int, size: Int)] {
    var out: [String: (Int, Int)] = [:]
    var at = 0
    while at + 512 <= bytes.count, bytes[at] != 0 {
        let name = String(decoding: bytes[at..<(at + 100)].prefix { $0 != 0 }, as: UTF8.self)
        let size = Int(String(decoding: bytes[(at + 124)..<(at + 135)], as: UTF8.self), radix: 8) ?? 0
        out[name] = (at + 512, size)
        at += 512 + (size + 511) / 512 * 512
    }
    return out
}
