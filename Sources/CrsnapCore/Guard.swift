import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// guard: a pre snapshot, a command, and either a post snapshot paired with
/// the pre (the command succeeded, and the health check if one was given)
/// or a rollback to the pre (either failed).
public enum Guard {
    public struct Outcome: Codable {
        public var pre: String
        public var post: String?
        /// crsnap's exit status: 0, the command's status, the check's, or
        /// 124 when the check ran out of time.
        public var status: Int32
        public var rolled_back: Bool
        /// What failed: "command", "check", or nil.
        public var failed: String?
        /// The check's exit status; nil without a check, when it did not run
        /// or when it ran out of time.
        public var check_status: Int32?
        public var check_timed_out: Bool
        /// With --test: the restore test of the pre snapshot.
        public var restore_test: RestoreTest.Report?
    }

    /// `--check EXECUTABLE`: run with no arguments after the command
    /// succeeded, where the command ran, for at most `timeout` seconds.
    public struct Check {
        public var executable: String
        public var timeout: Double
        public static let defaultTimeout = 60.0
        public init(executable: String, timeout: Double = defaultTimeout) {
            self.executable = executable
            self.timeout = timeout
        }
    }

    /// With `test`, the pre snapshot must pass a restore test (`RestoreTest`)
    /// before the command runs; if it fails, the pre snapshot is deleted
    /// again and the command is not run.
    public static func run(store: Store, name: String, tag: String?, inside: Bool, command: [String],
                           check: Check? = nil, test: Bool = false) throws -> Outcome {
        guard let first = command.first, !first.isEmpty else {
            throw CrsnapError(.usage, "no command given: use crsnap guard NAME -- CMD [ARG...]")
        }
        if let tag { try Names.validate(tag, what: "tag") }
        let hostPath = inside ? nil : Program.find(first)
        if !inside && hostPath == nil {
            throw CrsnapError(.usage, "command \"\(first)\" not found in PATH; nothing was changed")
        }
        let c = try Container(store: store, name: name)
        _ = try c.runningInit()
        let checkPath = try check.map { try resolve($0, in: c, inside: inside) }
        let pre = try Take.take(store: store, name: name, TakeOptions(tag: tag, role: .pre))
        Progress.note("guard: pre snapshot \(pre.id)")
        var tested: RestoreTest.Report?
        if test {
            let preID = SnapshotID(container: name, number: pre.number)
            let t: RestoreTest.Report
            do {
                t = try RestoreTest.run(store: store, id: preID)
            } catch {
                try? Snapshots.delete(store: store, id: preID)
                throw CrsnapError(.failed, "guard: the restore test of \(pre.id) could not run: \(error)\nthe command was not run; \(pre.id) was deleted again")
            }
            guard t.ok else {
                try? Snapshots.delete(store: store, id: preID)
                throw CrsnapError(.failed, "guard: the restore test of \(pre.id) failed: \(t.problem ?? "?")\nthe command was not run; \(pre.id) was deleted again")
            }
            Progress.note("guard: \(pre.id) restores (\(t.tasks) tasks, up \(String(format: "%.1f", t.watched_ms / 1000)) s in a throwaway container)")
            tested = t
        }

        let status: Int32
        if inside {
            status = try Lifecycle.exec(store: store, name: name, command: command)
        } else {
            let pid = Program.spawn(path: hostPath!, argv: command, env: ProcessInfo.processInfo.environment,
                                    fdmap: [0, 1, 2], newSession: false)
            guard pid > 0 else { throw SystemError("exec", first, errno: errno) }
            status = Program.wait(pid)
        }
        var outcome = Outcome(pre: pre.id, post: nil, status: status, rolled_back: false, failed: nil,
                              check_status: nil, check_timed_out: false, restore_test: tested)
        if status != 0 {
            Progress.warn("guard: \(command.joined(separator: " ")) exited with status \(status); rolling back to \(pre.id)")
            outcome.failed = "command"
        } else if let check, let checkPath {
            let result = try runCheck(check, path: checkPath, in: c, inside: inside)
            outcome.check_status = result
            if result != 0 {
                outcome.failed = "check"
                outcome.check_timed_out = result == nil
                outcome.status = result ?? 124
                let why = result.map { "exited with status \($0)" } ?? "did not finish within \(String(format: "%g", check.timeout)) s (killed)"
                Progress.warn("guard: the check \(check.executable) \(why); rolling back to \(pre.id)")
            }
        }
        if outcome.failed != nil {
            _ = try Rollback.rollback(store: store, id: SnapshotID(container: name, number: pre.number))
            outcome.rolled_back = true
            return outcome
        }
        let post = try Take.take(store: store, name: name, TakeOptions(tag: tag, role: .post, pair: pre.number))
        Progress.note("guard: post snapshot \(post.id)")
        outcome.post = post.id
        return outcome
    }

    /// Where the check is, found before anything is changed: on the host in
    /// PATH, or inside the container's root in the container's PATH.
    static func resolve(_ check: Check, in c: Container, inside: Bool) throws -> String {
        let x = check.executable
        guard check.timeout > 0, check.timeout.isFinite else {
            throw CrsnapError(.usage, "invalid --check-timeout \(check.timeout): expected a number of seconds above 0; nothing was changed")
        }
        guard !x.isEmpty, !x.contains("\0") else { throw CrsnapError(.usage, "invalid --check: empty; nothing was changed") }
        if !inside {
            guard let path = Program.find(x) else {
                throw CrsnapError(.usage, "invalid --check \"\(x)\": no such executable on the host (in PATH); nothing was changed")
            }
            return path
        }
        // Inside: the container's root as mounted on the host holds what the
        // check will see (its own tmpfs and volumes aside).
        let pathVar = c.environment.first { $0.hasPrefix("PATH=") }.map { String($0.dropFirst(5)) } ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        let candidates = x.contains("/") ? [x] : pathVar.split(separator: ":").map { "\($0)/\(x)" }
        guard x.hasPrefix("/") || !x.contains("/") else {
            throw CrsnapError(.usage, "invalid --check \"\(x)\": with --inside, give an absolute path or a name in the container's PATH; nothing was changed")
        }
        guard candidates.contains(where: { access(c.rootMount + $0, X_OK) == 0 }) else {
            throw CrsnapError(.usage, "invalid --check \"\(x)\": no such executable inside container \"\(c.name)\" (\(x.contains("/") ? "at that path" : "in its PATH")); nothing was changed")
        }
        return x
    }

    /// Runs the check with stdin from /dev/null and its stdout on stderr
    /// (guard's stdout is the command's alone): its exit status, nil when it
    /// ran out of time, 1 when the container no longer runs (for --inside).
    static func runCheck(_ check: Check, path: String, in c: Container, inside: Bool) throws -> Int32? {
        let null = try Sys.open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { Sys.close(null) }
        Progress.note("guard: checking with \(check.executable)")
        if inside {
            guard let initPid = try? c.runningInit() else {
                Progress.warn("guard: container \"\(c.name)\" no longer runs; the check cannot run inside it")
                return 1
            }
            return try Containers.exec(in: initPid, argv: [path], env: c.environment, stdin: null, stdout: 2, timeout: check.timeout)
        }
        let pid = Program.spawn(path: path, argv: [check.executable], env: ProcessInfo.processInfo.environment,
                                fdmap: [null, 2, 2], newSession: false)
        guard pid > 0 else { throw SystemError("exec", path, errno: errno) }
        return Program.wait(pid, timeout: check.timeout)
    }
}

public enum Diff {
    /// Changes from snapshot `a` to snapshot `b`, or to the live container when `b` is nil.
    public static func diff(store: Store, _ a: SnapshotID, _ b: SnapshotID?) throws -> [TreeChange] {
        if let b, b.container != a.container {
            throw CrsnapError(.usage, "diff compares snapshots of one container: \(a) and \(b) differ")
        }
        let c = try Container(store: store, name: a.container)
        let config = try c.config()
        let old = try files(c, a.number, config.kind)
        let new = try b.map { try files(c, $0.number, config.kind) } ?? ContainerRoot.filesDir(volume: c.volume, kind: config.kind)
        return try TreeDiff.compare(old: old, new: new, lower: config.kind == .overlay ? "" : nil)
    }

    static func files(_ c: Container, _ n: Int, _ kind: RootKind) throws -> String {
        _ = try c.manifest(n)
        try Rollback.checkComplete(c, n)
        return ContainerRoot.filesDir(volume: "\(c.snapshotDir(n))/fs", kind: kind)
    }
}
