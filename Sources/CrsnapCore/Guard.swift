import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// guard: a pre snapshot, a command, and either a post snapshot paired with
/// the pre (the command succeeded) or a rollback to the pre (it failed).
public enum Guard {
    public struct Outcome: Codable {
        public var pre: String
        public var post: String?
        public var status: Int32
        public var rolled_back: Bool
    }

    public static func run(store: Store, name: String, tag: String?, inside: Bool, command: [String]) throws -> Outcome {
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
        let pre = try Take.take(store: store, name: name, TakeOptions(tag: tag, role: .pre))
        Progress.note("guard: pre snapshot \(pre.id)")

        let status: Int32
        if inside {
            status = try Lifecycle.exec(store: store, name: name, command: command)
        } else {
            let pid = Program.spawn(path: hostPath!, argv: command, env: ProcessInfo.processInfo.environment,
                                    fdmap: [0, 1, 2], newSession: false)
            guard pid > 0 else { throw SystemError("exec", first, errno: errno) }
            status = Program.wait(pid)
        }
        if status != 0 {
            Progress.warn("guard: \(command.joined(separator: " ")) exited with status \(status); rolling back to \(pre.id)")
            _ = try Rollback.rollback(store: store, id: SnapshotID(container: name, number: pre.number))
            return Outcome(pre: pre.id, post: nil, status: status, rolled_back: true)
        }
        let post = try Take.take(store: store, name: name, TakeOptions(tag: tag, role: .post, pair: pre.number))
        Progress.note("guard: post snapshot \(post.id)")
        return Outcome(pre: pre.id, post: post.id, status: 0, rolled_back: false)
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
