import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// `crsnap doctor NAME`, and the first step of every take: what in a
/// running container would make CRIU fail after the freeze (blockers) or
/// make the snapshot weaker than it looks (warnings), found before anything
/// is frozen (see `Preflight`).
public enum TakePreflight {
    public struct Report: Codable {
        public var container: String
        /// A take would fail on a blocker.
        public var take_would_fail: Bool
        public var tasks: Int
        public var findings: [PreflightFinding]
        /// How the container's network is checkpointed.
        public var network: String
        public var preflight_ms: Double

        public var blockers: [PreflightFinding] { findings.filter { $0.severity == .blocker } }
        public var warnings: [PreflightFinding] { findings.filter { $0.severity == .warning } }
    }

    public static func run(store: Store, name: String) throws -> Report {
        let c = try Container(store: store, name: name)
        _ = try c.runningInit()
        return try check(c)
    }

    static func check(_ c: Container) throws -> Report {
        let t = DispatchTime.now()
        let pids = try c.cgroup().procs()
        let seen = Preflight.observe(pids: pids)
        let limits = Preflight.Limits(ghostLimit: UInt64(DumpRequest.defaultGhostLimit), canDumpOtherUsers: Proc.hasCapability(Proc.capSysResource) == true)
        let findings = Preflight.judge(tasks: seen.tasks, unix: seen.unix, tcp: seen.tcp, limits: limits)
        let network = seen.sharedNetwork
            ? "the host's namespace, shared: CRIU's network lock is not used (it would lock the host); TCP connections are dumped with their state"
            : "a namespace of its own, checkpointed with the processes (CRIU locks it with nftables while restoring it); its sockets were inspected inside it"
        return Report(container: c.name, take_would_fail: findings.contains { $0.severity == .blocker }, tasks: seen.tasks.count,
                      findings: findings, network: network, preflight_ms: milliseconds(since: t))
    }

    /// For take: the blockers as one error, before anything is frozen.
    static func requireTakeable(_ c: Container) throws -> Report {
        let r = try check(c)
        let blockers = r.blockers
        guard blockers.isEmpty else {
            let lines = blockers.map { "  - \($0.description)" }.joined(separator: "\n")
            throw CrsnapError(.failed, """
                take \(c.name) would fail; nothing was frozen:
                \(lines)
                no snapshot was added; the container runs on (crsnap doctor \(c.name) lists what stands in the way)
                """)
        }
        return r
    }
}
