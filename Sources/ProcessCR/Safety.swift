import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Preconditions that keep a mistake in crsnap (a stale pid, a wrong cgroup
/// path, a container that shares the host's network) from reaching the
/// machine: each primitive that signals, freezes or locks checks its target
/// here first. The checks are pure functions of what they are shown, so the
/// unit tests exercise them without root.
public enum Safety {
    /// Why `pid` must not be signalled, or nil: pid 0 and negative pids name
    /// process groups (kill(-1) is every process), pid 1 is the init of the
    /// pid namespace crsnap runs in — on a host, the machine's own.
    public static func signalRefusal(_ pid: pid_t) -> String? {
        if pid <= 0 { return "pid \(pid) names a process group or every process, not one process" }
        if pid == 1 { return "pid 1 is the init of crsnap's own pid namespace" }
        return nil
    }

    /// kill(2) for one process; refuses pid 0, 1 and negative pids.
    public static func signal(_ pid: pid_t, _ sig: Int32) throws {
        if let why = signalRefusal(pid) {
            throw SystemError("refuse to send signal \(sig) to", "pid \(pid) (\(why))", errno: EPERM)
        }
        if kill(pid, sig) != 0 && errno != ESRCH {
            throw SystemError("send signal \(sig) to", "pid \(pid)", errno: errno)
        }
    }

    /// What freezing a cgroup would catch besides a container.
    public struct FreezeTarget: Equatable {
        /// The cgroup to freeze, and the crsnap/ directory of its hierarchy
        /// under which crsnap makes containers' cgroups.
        public var path: String
        public var crsnapRoot: String
        /// Its tasks, and crsnap's own pid.
        public var procs: [pid_t]
        public var selfPid: pid_t
        /// The cgroups (same hierarchy, absolute paths) crsnap and pid 1 are in.
        public var selfCgroup: String?
        public var initCgroup: String?

        public init(path: String, crsnapRoot: String, procs: [pid_t], selfPid: pid_t, selfCgroup: String?, initCgroup: String?) {
            self.path = path
            self.crsnapRoot = crsnapRoot
            self.procs = procs
            self.selfPid = selfPid
            self.selfCgroup = selfCgroup
            self.initCgroup = initCgroup
        }
    }

    /// Why freezing `t.path` is unsafe, or nil. Only a container's own
    /// cgroup under crsnap/ may be frozen, and never one that holds crsnap
    /// itself or pid 1 — directly, or below it (a freezer freezes its
    /// descendants too).
    public static func freezeRefusal(_ t: FreezeTarget) -> String? {
        let path = normalized(t.path), root = normalized(t.crsnapRoot)
        guard path.hasPrefix(root + "/"), !path.dropFirst(root.count + 1).isEmpty else {
            return "\(t.path) is not a container's cgroup under \(t.crsnapRoot)"
        }
        if t.procs.contains(t.selfPid) { return "\(t.path) holds crsnap's own process (pid \(t.selfPid))" }
        if t.procs.contains(1) { return "\(t.path) holds pid 1, the init" }
        if let own = t.selfCgroup, contains(path, own) { return "crsnap's own cgroup \(own) is inside \(t.path)" }
        if let initCg = t.initCgroup, contains(path, initCg) { return "the init's cgroup \(initCg) is inside \(t.path)" }
        return nil
    }

    /// Why CRIU's network lock must not be applied to a tree in network
    /// namespace `treeNet`, or nil. The lock blocks every packet of the
    /// namespace it is applied in; one shared with crsnap is the host's.
    public static func networkLockRefusal(lock: Bool, treeNet: String?, selfNet: String?) -> String? {
        guard lock else { return nil }
        guard let treeNet, let selfNet else { return "the network namespace of the tree is unknown" }
        if treeNet == selfNet { return "the tree shares crsnap's network namespace (\(selfNet)): locking it would lock the host" }
        return nil
    }

    static func normalized(_ p: String) -> String {
        var s = p
        while s.count > 1 && s.hasSuffix("/") { s.removeLast() }
        return s
    }

    /// True when `inner` is `outer` or below it.
    static func contains(_ outer: String, _ inner: String) -> Bool {
        let o = normalized(outer), i = normalized(inner)
        return i == o || i.hasPrefix(o + "/")
    }
}

extension FreezerCgroup {
    /// The directory the container cgroups are made in: `<hierarchy>/crsnap`.
    var crsnapRoot: String { (path as NSString).deletingLastPathComponent }

    /// The cgroup (absolute path in this hierarchy) that process `pid`
    /// ("self" or a number) is in, from /proc/PID/cgroup; nil where unknown.
    func cgroupOf(_ pid: String) -> String? {
        guard let text = try? Sys.readText("/proc/\(pid)/cgroup") else { return nil }
        let hierarchy = (crsnapRoot as NSString).deletingLastPathComponent
        for line in text.split(separator: "\n") {
            // "ID:CONTROLLERS:PATH"; cgroup v2's line is "0::PATH"
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            let ours = version == 1 ? parts[1].split(separator: ",").contains("freezer") : parts[0] == "0" && parts[1].isEmpty
            if ours { return hierarchy + (parts[2] == "/" ? "" : String(parts[2])) }
        }
        return nil
    }

    /// Throws unless this cgroup may be frozen (see `Safety.freezeRefusal`).
    public func checkFreezable() throws {
        let target = Safety.FreezeTarget(path: path, crsnapRoot: crsnapRoot, procs: procs(), selfPid: getpid(),
                                         selfCgroup: cgroupOf("self"), initCgroup: cgroupOf("1"))
        if (crsnapRoot as NSString).lastPathComponent != "crsnap" {
            throw SystemError("refuse to freeze", "\(path) (not a container's cgroup in a crsnap/ directory)", errno: EPERM)
        }
        if let why = Safety.freezeRefusal(target) {
            throw SystemError("refuse to freeze", "\(path) (\(why))", errno: EPERM)
        }
    }
}

// MARK: - the host's network (for containers with a network of their own)

/// An IPv4 network, "10.88.0.0/16".
public struct IPv4Network: Equatable, Hashable, CustomStringConvertible, Sendable {
    /// Host byte order.
    public var address: UInt32
    public var prefix: Int

    public init(address: UInt32, prefix: Int) {
        self.address = address
        self.prefix = prefix
    }

    /// Parses "A.B.C.D/N" (or a bare address, /32).
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { return nil }
        let octets = parts[0].split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return nil }
        var a: UInt32 = 0
        for o in octets {
            guard !o.isEmpty, o.count <= 3, o.allSatisfy(\.isASCII), let v = UInt32(o), v <= 255 else { return nil }
            a = a << 8 | v
        }
        var p = 32
        if parts.count == 2 {
            guard let n = Int(parts[1]), (0...32).contains(n), !parts[1].hasPrefix("+") else { return nil }
            p = n
        }
        self.init(address: a, prefix: p)
    }

    public static func mask(_ prefix: Int) -> UInt32 { prefix == 0 ? 0 : UInt32.max << UInt32(32 - prefix) }

    /// True when the two share any address.
    public func overlaps(_ other: IPv4Network) -> Bool {
        let m = IPv4Network.mask(min(prefix, other.prefix))
        return address & m == other.address & m
    }

    public var description: String {
        "\(address >> 24).\(address >> 16 & 255).\(address >> 8 & 255).\(address & 255)/\(prefix)"
    }
}

extension Safety {
    /// Why containers must not get addresses from `range`, or nil: it must
    /// not overlap a network the host already reaches or holds (a route other
    /// than the default one, an address), or the host would lose it.
    public static func addressRangeRefusal(_ range: IPv4Network, host: [(network: IPv4Network, what: String)]) -> String? {
        for (net, what) in host where net.prefix > 0 && range.overlaps(net) {
            return "\(range) overlaps \(net) (\(what)) of the host"
        }
        return nil
    }

    /// The host's IPv4 routes (from /proc/net/route, default route left out)
    /// and the networks of its addresses (getifaddrs), as this process sees them.
    public static func hostNetworks() -> [(network: IPv4Network, what: String)] {
        var out: [(network: IPv4Network, what: String)] = []
        if let text = try? Sys.readText("/proc/net/route") {
            out += routes(procNetRoute: text)
        }
        var list: UnsafeMutablePointer<ifaddrs>?
        if getifaddrs(&list) == 0, let first = list {
            defer { freeifaddrs(list) }
            var p: UnsafeMutablePointer<ifaddrs>? = first
            while let ifa = p {
                defer { p = ifa.pointee.ifa_next }
                guard let sa = ifa.pointee.ifa_addr, sa.pointee.sa_family == sa_family_t(AF_INET) else { continue }
                let addr = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
                var prefix = 32
                if let nm = ifa.pointee.ifa_netmask {
                    prefix = nm.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }.nonzeroBitCount
                }
                let name = String(cString: ifa.pointee.ifa_name)
                out.append((IPv4Network(address: addr & IPv4Network.mask(prefix), prefix: prefix), "address \(IPv4Network(address: addr, prefix: prefix)) on \(name)"))
            }
        }
        return out
    }

    /// Parses /proc/net/route: "Iface Destination Gateway Flags RefCnt Use
    /// Metric Mask ...", addresses in hex in network byte order as the
    /// machine stores it (little-endian here).
    static func routes(procNetRoute text: String) -> [(network: IPv4Network, what: String)] {
        var out: [(network: IPv4Network, what: String)] = []
        for line in text.split(separator: "\n").dropFirst() {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count >= 8, let dest = UInt32(f[1], radix: 16), let mask = UInt32(f[7], radix: 16) else { continue }
            // the kernel prints the network-order word as a host-order number
            let d = UInt32(bigEndian: dest), m = UInt32(bigEndian: mask)
            let prefix = m.nonzeroBitCount
            guard prefix > 0 else { continue }
            out.append((IPv4Network(address: d, prefix: prefix), "route via \(f[0])"))
        }
        return out
    }

    /// Why an nftables command batch must not run, or nil: crsnap touches
    /// only tables whose name starts with "crsnap", and never flushes, resets
    /// or deletes the ruleset as a whole (that would remove every rule the
    /// host has).
    public static func nftablesRefusal(_ batch: String) -> String? {
        let families: Set<String> = ["ip", "ip6", "inet", "arp", "bridge", "netdev"]
        let verbs: Set<String> = ["add", "create", "insert", "replace", "delete", "destroy", "flush", "reset", "list"]
        let objects: Set<String> = ["table", "chain", "rule", "set", "map", "element", "flowtable", "counter", "quota", "limit"]
        // commands end at a newline or a ";" outside braces ({ type nat ... ; })
        var commands: [String] = [], current = "", depth = 0
        for ch in batch {
            if ch == "{" { depth += 1 } else if ch == "}" { depth = max(0, depth - 1) }
            if (ch == "\n" || ch == ";") && depth == 0 {
                commands.append(current)
                current = ""
            } else {
                current.append(ch)
            }
        }
        commands.append(current)
        for command in commands {
            let t = command.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let verb = t.first else { continue }
            if verb.hasPrefix("#") { continue }
            guard verbs.contains(verb), t.count >= 2 else { return "\"\(command)\" is not a command crsnap sends" }
            let object = t[1]
            if object == "ruleset" {
                if verb == "list" { continue }
                return "\"\(command)\" would \(verb) the host's whole ruleset"
            }
            if verb == "list" && object == "tables" { continue }  // the tables' names: read only
            guard objects.contains(object) else { return "\"\(command)\" names no table crsnap owns" }
            var i = 2
            if i < t.count, families.contains(t[i]) { i += 1 }
            guard i < t.count else { return "\"\(command)\" names no table" }
            let table = t[i]
            if !table.hasPrefix("crsnap") { return "\"\(command)\" touches table \(table), which is not crsnap's" }
        }
        return nil
    }
}
