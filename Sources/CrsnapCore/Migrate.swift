import FSSnapshot
import Foundation
import SnapshotArchive
#if canImport(Glibc)
import Glibc
#endif

/// Where `crsnap migrate` moves a container: another store on this machine,
/// or a store on another host reached with ssh, where crsnap runs as the
/// receiving end (`crsnap receive`, `list`, `resume`, `delete`, `rm`).
public struct Destination: CustomStringConvertible, Sendable {
    public enum Place: Equatable, Sendable {
        case local(store: String)
        /// `ssh://[user@]host[:port][/store]`; store nil: the remote default.
        case ssh(user: String?, host: String, port: Int?, store: String?)
    }

    public let place: Place
    /// The crsnap program on the other side (ssh only).
    public let remoteCrsnap: String
    /// An ssh client configuration file (`ssh -F`): keys, known hosts, ports.
    public let sshConfig: String?
    public let description: String
    /// An ssh master connection the commands share (`openConnection`):
    /// each command then costs no handshake, which matters inside the stop.
    var controlPath: String?

    public init(parsing text: String, remoteCrsnap: String? = nil, sshConfig: String? = nil) throws {
        func bad(_ why: String) -> CrsnapError { CrsnapError(.usage, "invalid --to \"\(text)\": \(why)") }
        description = text
        self.sshConfig = sshConfig
        self.remoteCrsnap = remoteCrsnap ?? "crsnap"
        guard !text.contains("\0") else { throw bad("it contains a NUL byte") }
        if text.hasPrefix("ssh://") {
            var rest = Substring(text.dropFirst("ssh://".count))
            var store: String?
            if let slash = rest.firstIndex(of: "/") {
                store = String(rest[slash...])
                rest = rest[..<slash]
            }
            var user: String?
            if let at = rest.firstIndex(of: "@") {
                user = String(rest[..<at])
                rest = rest[rest.index(after: at)...]
                guard let u = user, !u.isEmpty, u.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_-.".contains($0)) }),
                      !u.hasPrefix("-") else { throw bad("the user \"\(user ?? "")\" is not a user name") }
            }
            var port: Int?
            if let colon = rest.lastIndex(of: ":") {
                guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else { throw bad("the port is not a number from 1 to 65535") }
                port = p
                rest = rest[..<colon]
            }
            let host = String(rest)
            guard !host.isEmpty, !host.hasPrefix("-"), host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".-_".contains($0)) }) else {
                throw bad("\"\(host)\" is not a host name or IPv4 address")
            }
            if let s = store {
                guard !s.split(separator: "/").contains("..") else { throw bad("the store path must not contain '..'") }
                if s == "/" { store = nil }
            }
            place = .ssh(user: user, host: host, port: port, store: store)
        } else if text.hasPrefix("/") {
            place = .local(store: try Store.resolvePath(text))
        } else {
            throw bad("expected a store path (/...) or ssh://[user@]host[:port][/store]")
        }
    }

    /// argv that runs `crsnap ARGS --store STORE` on the destination. Over
    /// ssh the remote command is one string for the remote shell: every
    /// word is single-quoted there, so nothing in it is interpreted.
    func argv(_ args: [String]) throws -> [String] {
        switch place {
        case let .local(store):
            return [try Lifecycle.selfExecutable()] + args + ["--store", store]
        case let .ssh(user, host, _, store):
            var argv = ["ssh", "-T", "-o", "BatchMode=yes"] + sshOptions
            if let controlPath { argv += ["-o", "ControlMaster=no", "-o", "ControlPath=\(controlPath)"] }
            let words = [remoteCrsnap] + args + (store.map { ["--store", $0] } ?? [])
            return argv + [user.map { "\($0)@\(host)" } ?? host, "--", words.map(Self.quote).joined(separator: " ")]
        }
    }

    var sshOptions: [String] {
        guard case let .ssh(_, _, port, _) = place else { return [] }
        return (sshConfig.map { ["-F", $0] } ?? []) + (port.map { ["-p", String($0)] } ?? [])
    }

    var sshTarget: String? {
        guard case let .ssh(user, host, _, _) = place else { return nil }
        return user.map { "\($0)@\(host)" } ?? host
    }

    /// Over ssh: one authenticated master connection in the background
    /// (`ssh -M -N -f`, its control socket in a private directory), which
    /// every later command of this destination uses. A no-op for a local
    /// store; on failure the commands simply connect each time.
    mutating func openConnection() {
        guard let target = sshTarget, controlPath == nil else { return }
        var template = Array("/tmp/crsnap-ssh.XXXXXX".utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }).map({ String(cString: $0) }) else { return }
        let path = "\(dir)/master"
        // -f: it goes to the background once authenticated; its stdio is
        // /dev/null so nothing waits on a pipe it keeps open.
        let argv = ["ssh", "-T", "-o", "BatchMode=yes"] + sshOptions
            + ["-o", "ControlMaster=yes", "-o", "ControlPath=\(path)", "-M", "-N", "-f", target]
        guard let exe = Program.find("ssh"), let null = try? Sys.open("/dev/null", O_RDWR) else { return }
        defer { Sys.close(null) }
        let pid = Program.spawn(path: exe, argv: argv, env: ProcessInfo.processInfo.environment, fdmap: [null, null, null], newSession: false)
        if pid > 0, Program.wait(pid, timeout: 30) == 0, Sys.exists(path) {
            controlPath = path
        } else {
            rmdir(dir)
        }
    }

    /// Ends the master connection and removes its directory.
    mutating func closeConnection() {
        guard let path = controlPath, let target = sshTarget else { return }
        controlPath = nil
        _ = try? Program.run(["ssh", "-o", "ControlPath=\(path)", "-O", "exit", target])
        try? Sys.unlink(path)
        rmdir((path as NSString).deletingLastPathComponent)
    }

    static func quote(_ word: String) -> String {
        "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    /// Runs `crsnap ARGS` there: its stdout, or a failure with what it said.
    func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = try PipedProgram(try argv(args), .readFromIt)
        let out = String(decoding: Sys.readToEnd(p.fd), as: UTF8.self)
        do {
            try p.finish()
            return (0, out, p.stderr)
        } catch let f as Program.Failure {
            return (f.status, out, f.output)
        }
    }

    /// The same, when anything but success is an error.
    @discardableResult
    func mustRun(_ args: [String], doing what: String) throws -> String {
        let r = try run(args)
        guard r.status == 0 else {
            throw CrsnapError(.failed, "\(what) on \(self) failed (exit \(r.status)): \(r.err.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return r.out
    }
}

/// What `crsnap migrate` did.
public struct MigrateResult: Codable, Equatable {
    public var container: String
    public var destination: String
    /// The snapshot taken while the container ran, sent first; the one
    /// taken as it stopped, sent second (incremental on the first).
    public var first: String
    public var second: String
    /// What the first send was incremental on (a snapshot the destination
    /// already held); nil: it was sent whole.
    public var first_parent: String?
    public var first_bytes: UInt64
    public var first_fs_bytes: UInt64
    public var second_bytes: UInt64
    public var second_fs_bytes: UInt64
    /// From the stop (take --stop asked to freeze) until the container ran
    /// on the destination: what its clients could not reach it.
    public var downtime_ms: Double
    /// The parts of the downtime: take --stop, the second send, the resume
    /// there (as this side waited for it).
    public var stop_ms: Double
    public var second_send_ms: Double
    public var resume_ms: Double
    public var total_ms: Double
    /// Over ssh: whether the commands shared one connection.
    public var ssh_shared_connection: Bool?
}

/// `crsnap migrate`: move a running container to another store or host
/// with a short stop.
public enum Migrate {
    /// take (the container runs on) → send, incremental against the newest
    /// snapshot the destination holds → take --stop → send what changed →
    /// resume there → only then remove the container here. On a failure
    /// before the resume succeeded the container runs here again (resumed
    /// from its stop snapshot when it was stopped) and what was sent is
    /// removed from the destination.
    /// `compress`: zstd on the wire (worth it over a slow link).
    public static func migrate(store: Store, name: String, to destination: Destination, compress: Bool = false) throws -> MigrateResult {
        let started = DispatchTime.now()
        signal(SIGPIPE, SIG_IGN)
        let c = try Container(store: store, name: name)
        let config = try c.config()
        guard c.isRunning else { throw CrsnapError(.conflict, "container \"\(name)\" is not running; migrate moves a running container (for a stopped one: crsnap send and receive its newest snapshot)") }
        if !(config.volumes ?? []).isEmpty {
            throw CrsnapError(.usage, "container \"\(name)\" has volumes (--volume), which migrate cannot carry yet; nothing was changed")
        }
        if case let .local(path) = destination.place, (try? Store.openExisting(path))?.id == store.id {
            throw CrsnapError(.usage, "invalid --to \(destination): it is the container's own store")
        }
        var dest = destination
        dest.openConnection()
        defer { dest.closeConnection() }

        // What the destination holds of this container.
        let probe = try dest.run(["ps", "--json"])
        guard probe.status == 0 || probe.status == 3 else {
            throw CrsnapError(.failed, "cannot ask \(dest) what it holds (exit \(probe.status)): \(probe.err.trimmingCharacters(in: .whitespacesAndNewlines)); nothing was changed")
        }
        let there = (try? JSONSerialization.jsonObject(with: Data(probe.out.utf8)) as? [[String: Any]])?.first { $0["name"] as? String == name }
        if let state = there?["state"] as? String, state == "running" {
            throw CrsnapError(.conflict, "container \"\(name)\" is running on \(dest); nothing was changed")
        }
        var held: Set<String> = []  // the identities of its snapshots there
        if there != nil {
            let listed = try dest.mustRun(["list", name, "--json"], doing: "listing \(name)'s snapshots")
            for row in (try? JSONSerialization.jsonObject(with: Data(listed.utf8)) as? [[String: Any]]) ?? [] {
                if let u = row["fs_uuid"] as? String { held.insert(u) }
            }
        }
        let created = there == nil
        var sentThere: [String] = []
        func cleanDestination() -> String {
            if created {
                let r = try? dest.run(["rm", "--force", name])
                return r?.status == 0 ? "\(name) removed from \(dest)" : "removing \(name) from \(dest) failed: \(r?.err ?? "?")"
            }
            var failed: [String] = []
            for id in sentThere.reversed() where (try? dest.run(["delete", id]))?.status != 0 { failed.append(id) }
            return failed.isEmpty ? "what was sent removed from \(dest)" : "deleting \(failed.joined(separator: ", ")) on \(dest) failed"
        }

        // 1. While it runs: a snapshot, sent against what the destination has.
        let first = try Take.take(store: store, name: name, TakeOptions(tag: "migrate")).number
        let parent = c.snapshotNumbers().filter { $0 != first }.reversed()
            .first { n in Snapshots.identity(c, n).map(held.contains) ?? false }
        let one: TransferResult
        do {
            one = try send(c, first, parent: parent, to: dest, compress: compress)
            sentThere.append("\(name)@\(first)")
            try Faults.check("migrate.sent")
        } catch {
            let cleaned = cleanDestination()
            try? Snapshots.delete(store: store, id: SnapshotID(container: name, number: first))
            throw CrsnapError(.failed, "migrate of \(name) to \(dest) failed: \(error)\nthe container runs on here; \(cleaned)")
        }

        // 2. The short stop: stopped with a snapshot, what changed sent, resumed there.
        let stopAt = DispatchTime.now()
        var stopOptions = TakeOptions(tag: "migrate")
        stopOptions.stop = true
        // In the host's network its connections end here, their peers told
        // at once: they come back closed there (below). Saved, they would
        // end silently, and a client waiting for an answer would wait for
        // its own timeout.
        stopOptions.closeConnections = !config.networkMode.ownNamespace
        let second: Int
        do {
            second = try Take.take(store: store, name: name, stopOptions).number
        } catch {
            let cleaned = cleanDestination()
            try? Snapshots.delete(store: store, id: SnapshotID(container: name, number: first))
            throw CrsnapError(.failed, "migrate of \(name) to \(dest) failed: stopping it with a snapshot: \(error)\n\(c.isRunning ? "the container runs on here" : "the container's state here is as take left it"); \(cleaned)")
        }
        let stopMs = milliseconds(since: stopAt)
        let two: TransferResult
        var sendMs = 0.0
        let resumeAt: DispatchTime
        do {
            try Faults.check("migrate.stopped")
            let t = DispatchTime.now()
            // A copy store's snapshots travel whole (no parent to send against).
            two = try send(c, second, parent: store.backend is BtrfsBackend ? first : nil, to: dest, compress: compress)
            sendMs = milliseconds(since: t)
            sentThere.append("\(name)@\(second)")
            try Faults.check("migrate.resume")
            resumeAt = DispatchTime.now()
            // Its TCP connections end: the peers are on this side. With a
            // network of its own, those inside it stay (resume's default).
            try dest.mustRun(["resume", name] + (config.networkMode.ownNamespace ? [] : ["--tcp", "close"]), doing: "resuming \(name)")
        } catch {
            let cleaned = cleanDestination()
            let back: String
            do {
                _ = try Rollback.resume(store: store, name: name)
                for n in [second, first] { try? Snapshots.delete(store: store, id: SnapshotID(container: name, number: n)) }
                back = "the container runs here again, from \(name)@\(second)"
            } catch let resumeError {
                back = "resuming it here failed too: \(resumeError)\nit is stopped here; \(name)@\(second) holds its state (crsnap resume \(name))"
            }
            throw CrsnapError(.failed, "migrate of \(name) to \(dest) failed: \(error)\n\(back); \(cleaned)")
        }
        let downtime = milliseconds(since: stopAt)
        let resumeMs = milliseconds(since: resumeAt)

        // 3. It runs there: this side goes. A bridged container moved to a
        // store on this host took over the host side its address names (the
        // same veth, ports and bridge): removing it here must not undo that.
        var sameHostSide = false
        if case .local(let path) = dest.place, config.networkMode == .bridge,
           let there = try? Store.openExisting(path), let a = try? store.bridge(), let b = try? there.bridge() {
            sameHostSide = a.name == b.name
        }
        try Lifecycle.remove(store: store, name: name, force: true, keepHostSide: sameHostSide)
        return MigrateResult(container: name, destination: dest.description, first: "\(name)@\(first)", second: "\(name)@\(second)",
                             first_parent: parent.map { "\(name)@\($0)" }, first_bytes: one.bytes, first_fs_bytes: one.fs_bytes,
                             second_bytes: two.bytes, second_fs_bytes: two.fs_bytes, downtime_ms: downtime,
                             stop_ms: stopMs, second_send_ms: sendMs, resume_ms: resumeMs,
                             total_ms: milliseconds(since: started),
                             ssh_shared_connection: dest.sshTarget == nil ? nil : dest.controlPath != nil)
    }

    /// Snapshot `n` into `crsnap receive` on the destination.
    static func send(_ c: Container, _ n: Int, parent: Int?, to dest: Destination, compress: Bool) throws -> TransferResult {
        let receiver = try PipedProgram(try dest.argv(["receive"]), .writeToIt)
        defer { receiver.abort() }
        let result: TransferResult
        let meter = TransferMeter("sending \(c.name)@\(n) to \(dest)")
        defer { meter?.finish() }
        do {
            result = try Container.locked(store: c.store, name: c.name) { c in
                // Taken by this migrate a moment ago, its images hashed as
                // they were written: hashing them again would only lengthen
                // the stop. The receiver checks every byte it gets.
                try Transfer.write(c, n, parent: parent.map { SnapshotID(container: c.name, number: $0) },
                                   into: FileSink(fd: receiver.fd, name: "crsnap receive on \(dest)", meter: meter), compress: compress,
                                   verify: false)
            }
            try receiver.finish()
        } catch {
            receiver.abort()
            let said = receiver.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            throw CrsnapError(.failed, "sending \(c.name)@\(n): " + (said.isEmpty ? "\(error)" : "\(said)"))
        }
        return result
    }
}
