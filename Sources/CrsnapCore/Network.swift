import ContainerNetwork
import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// The store's network settings (`crsnap network set`): the bridge its
/// bridged containers join and the subnet their addresses come from. Kept in
/// network.json at the store's root; absent: the defaults.
public struct NetworkSettings: Codable, Equatable, Sendable {
    public var bridge: String
    public var subnet: String

    public static let defaults = NetworkSettings(bridge: Bridge.defaultName, subnet: Bridge.defaultSubnet.description)
}

/// One bridged container's lease: its address and the host ports it holds.
public struct NetworkLease: Codable, Equatable, Sendable {
    public var container: String
    public var address: String
    public var publish: [PortMapping]
}

/// What `crsnap network` shows.
public struct NetworkReport: Codable, Equatable, Sendable {
    public var bridge: String
    public var subnet: String
    public var gateway: String
    public var leases: [NetworkLease]
}

extension Store {
    var networkSettingsPath: String { "\(root)/network.json" }

    public func networkSettings() throws -> NetworkSettings {
        guard Sys.exists(networkSettingsPath) else { return .defaults }
        return try JSON.read(NetworkSettings.self, from: networkSettingsPath)
    }

    /// The bridge of the store's settings.
    public func bridge() throws -> Bridge {
        let s = try networkSettings()
        guard let subnet = IPv4Network(s.subnet) else {
            throw CrsnapError(.failed, "\(networkSettingsPath): subnet \"\(s.subnet)\" is not an IPv4 network")
        }
        return Bridge(name: s.bridge, subnet: subnet)
    }

    /// Held while leases are given or the settings change: the store's
    /// containers' addresses and published ports stay unique.
    func networkLock() throws -> FileLock { try FileLock(path: "\(root)/network.lock") }
}

/// Addresses, published ports and the host's side of bridged containers.
public enum Networks {
    /// Parses `--publish` values: well formed, no host port twice.
    public static func parsePublish(_ values: [String]) throws -> [PortMapping] {
        var out: [PortMapping] = []
        for v in values {
            guard let m = PortMapping(parsing: v) else {
                throw CrsnapError(.usage, "invalid --publish \"\(v)\": expected HOSTPORT:CTRPORT[/tcp|/udp], ports 1-65535")
            }
            if out.contains(where: { $0.hostPort == m.hostPort && $0.proto == m.proto }) {
                throw CrsnapError(.usage, "invalid --publish \"\(v)\": host port \(m.hostPort)/\(m.proto.rawValue) is given twice")
            }
            out.append(m)
        }
        return out
    }

    /// Every bridged container's lease in the store.
    public static func leases(store: Store) -> [NetworkLease] {
        store.containerNames().compactMap { name in
            guard let c = try? Container(store: store, name: name), let cfg = try? c.config(),
                  cfg.networkMode == .bridge, let a = cfg.address else { return nil }
            return NetworkLease(container: name, address: a, publish: cfg.publish ?? [])
        }
    }

    /// The address for a new bridged container (the requested one, checked,
    /// or the lowest free one), after checking its published ports are
    /// free. Called with the store's network lock held.
    static func lease(store: Store, requested: String?, publish: [PortMapping]) throws -> IPv4Network {
        let bridge = try store.bridge()
        guard let range = bridge.hostRange else {
            throw CrsnapError(.failed, "the store's subnet \(bridge.subnet) has no room for containers (crsnap network set --subnet)")
        }
        let held = leases(store: store)
        for m in publish {
            if let other = held.first(where: { $0.publish.contains { $0.hostPort == m.hostPort && $0.proto == m.proto } }) {
                throw CrsnapError(.conflict, "invalid --publish \(m): host port \(m.hostPort)/\(m.proto.rawValue) is published by container \"\(other.container)\"")
            }
            if Bridge.portInUse(m) {
                throw CrsnapError(.conflict, "invalid --publish \(m): host port \(m.hostPort)/\(m.proto.rawValue) is in use on this host")
            }
        }
        let taken = Set(held.compactMap { IPv4Network($0.address)?.address })
        if let r = requested {
            guard let a = IPv4Network(r), !r.contains("/") else {
                throw CrsnapError(.usage, "invalid --address \"\(r)\": expected an IPv4 address such as \(Bridge.dotted(range.lowerBound))")
            }
            guard range.contains(a.address) else {
                throw CrsnapError(.usage, "invalid --address \(r): outside the containers' addresses of subnet \(bridge.subnet) (\(Bridge.dotted(range.lowerBound)) to \(Bridge.dotted(range.upperBound)); the gateway is \(Bridge.dotted(bridge.gateway.address)))")
            }
            if let other = held.first(where: { IPv4Network($0.address)?.address == a.address }) {
                throw CrsnapError(.conflict, "invalid --address \(r): container \"\(other.container)\" has it")
            }
            return IPv4Network(address: a.address, prefix: bridge.subnet.prefix)
        }
        guard let free = range.first(where: { !taken.contains($0) }) else {
            throw CrsnapError(.conflict, "no free address left in subnet \(bridge.subnet) (\(taken.count) leased)")
        }
        return IPv4Network(address: free, prefix: bridge.subnet.prefix)
    }

    /// Joins a launched init (waiting in its namespaces) to the bridge and
    /// forwards its published ports.
    static func attach(_ c: Container, _ config: ContainerConfig, pid: pid_t) throws {
        guard let address = config.bridgeAddress else { return }
        // Not while the last container's removal takes the bridge away.
        let lock = try c.store.networkLock()
        defer { lock.release() }
        let bridge = try c.store.bridge()
        try bridge.ensure()
        try bridge.attach(pid: pid, address: address)
        try bridge.publish(config.publish ?? [], to: address.address)
        try bridge.stopRefusing(address.address)
    }

    /// While a bridged container is killed and restored: new connections to
    /// its address are reset at once instead of vanishing (a client then
    /// retries at its own pace rather than after TCP's one-second SYN
    /// timeout). Best effort: a rollback goes on without it (there is no
    /// table to add to before `ensure`, e.g. after a reboot).
    static func refuseConnections(_ c: Container, _ config: ContainerConfig) {
        guard let address = config.bridgeAddress, let bridge = try? c.store.bridge() else { return }
        try? bridge.refuseWhileRestoring(address.address)
    }

    /// Ends `refuseConnections`.
    static func acceptConnections(_ c: Container, _ config: ContainerConfig) {
        guard let address = config.bridgeAddress, let bridge = try? c.store.bridge() else { return }
        try? bridge.stopRefusing(address.address)
    }

    /// What CRIU needs to restore a bridged container's network: the bridge
    /// there, the host end of the previous veth gone, and the external that
    /// has CRIU make the pair with its host end in the bridge. Published ports
    /// are forwarded again (the same address comes back).
    static func prepareRestore(_ c: Container, _ config: ContainerConfig) throws -> [String] {
        guard let address = config.bridgeAddress else { return [] }
        let bridge = try c.store.bridge()
        try bridge.ensure()
        try Netlink.deleteLink(Bridge.hostInterface(for: address.address))
        try bridge.publish(config.publish ?? [], to: address.address)
        return [bridge.criuExternal(address: address.address)]
    }

    /// Removes what a bridged container has on the host: its forwarded ports
    /// and its veth; with the store's last lease, the bridge and its table
    /// too, unless something else is attached to the bridge. The lease goes
    /// with its config.
    static func release(_ c: Container, _ config: ContainerConfig) throws {
        guard let address = config.bridgeAddress else { return }
        let lock = try c.store.networkLock()
        defer { lock.release() }
        let bridge = try c.store.bridge()
        try bridge.unpublish(config.publish ?? [])
        try Netlink.deleteLink(Bridge.hostInterface(for: address.address))
        if !leases(store: c.store).contains(where: { $0.container != c.name }) { try bridge.removeIfUnused() }
    }

    /// What of the host's side no container of the store accounts for (a
    /// crash, a container directory removed by hand): host-side veths of
    /// addresses of the subnet that no container leases, and forwarded ports
    /// to addresses of the subnet that no lease publishes. (A leased
    /// address's veth is left alone: its container may be starting or being
    /// restored; a stopped one's goes with its namespace.)
    /// Descriptions and the removals that fix them.
    static func leftovers(store: Store) -> [(what: String, remove: () throws -> Void)] {
        guard let bridge = try? store.bridge() else { return [] }
        let mask = IPv4Network.mask(bridge.subnet.prefix)
        func inSubnet(_ a: UInt32) -> Bool { a & mask == bridge.subnet.address }
        var addresses: Set<UInt32> = []
        var leased: Set<String> = []
        for n in store.containerNames() {
            guard let c = try? Container(store: store, name: n), let cfg = try? c.config(), let a = cfg.bridgeAddress else { continue }
            addresses.insert(a.address)
            for p in cfg.publish ?? [] { leased.insert("\(p.proto.rawValue) \(p.hostPort) \(a.address) \(p.containerPort)") }
        }
        var out: [(what: String, remove: () throws -> Void)] = []
        for link in Netlink.linkNames() {
            guard let a = Bridge.address(ofHostInterface: link), inSubnet(a), !addresses.contains(a) else { continue }
            out.append(("network: veth \(link) of \(Bridge.dotted(a)), which no container leases", { try Netlink.deleteLink(link) }))
        }
        for (proto, ports) in (try? bridge.published()) ?? [:] {
            for (hostPort, to) in ports.sorted(by: { $0.key < $1.key }) where inSubnet(to.address) {
                guard !leased.contains("\(proto.rawValue) \(hostPort) \(to.address) \(to.port)") else { continue }
                let m = PortMapping(hostPort: hostPort, containerPort: to.port, proto: proto)
                out.append(("network: host port \(hostPort)/\(proto.rawValue) forwarded to \(Bridge.dotted(to.address)):\(to.port), which no container publishes",
                            { try bridge.unpublish([m]) }))
            }
        }
        return out
    }

    /// Removes the leftovers (`crsnap doctor --repair`) under the network
    /// lock; returns what was done.
    static func removeLeftovers(store: Store) throws -> [String] {
        let lock = try store.networkLock()
        defer { lock.release() }
        return try leftovers(store: store).map { l in
            try l.remove()
            return "\(l.what): removed"
        }
    }

    /// The settings and every lease (`crsnap network`).
    public static func report(store: Store) throws -> NetworkReport {
        let b = try store.bridge()
        return NetworkReport(bridge: b.name, subnet: b.subnet.description, gateway: b.gateway.description,
                             leases: leases(store: store))
    }

    /// Changes the store's bridge or subnet (`crsnap network set`), refused
    /// while a container holds a lease.
    public static func set(store: Store, bridge name: String?, subnet text: String?) throws {
        var s = try store.networkSettings()
        if let name {
            guard (1...15).contains(name.utf8.count),
                  name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
                throw CrsnapError(.usage, "invalid --bridge \"\(name)\": 1 to 15 letters, digits, '-' or '_'")
            }
            s.bridge = name
        }
        if let text {
            guard let n = IPv4Network(text), text.contains("/") else {
                throw CrsnapError(.usage, "invalid --subnet \"\(text)\": expected an IPv4 network such as 10.87.0.0/24")
            }
            let b = Bridge(name: s.bridge, subnet: n)
            guard n.address == b.subnet.address else {
                throw CrsnapError(.usage, "invalid --subnet \(text): host bits are set (the network is \(b.subnet))")
            }
            if let why = b.subnetRefusal() { throw CrsnapError(.usage, "invalid --subnet \(text): \(why)") }
            s.subnet = b.subnet.description
        }
        let lock = try store.networkLock()
        defer { lock.release() }
        let held = leases(store: store)
        if !held.isEmpty, s != (try store.networkSettings()) {
            throw CrsnapError(.conflict, "containers hold addresses of the current subnet (\(held.map(\.container).joined(separator: ", "))): remove them first")
        }
        try JSON.write(s, to: store.networkSettingsPath)
    }
}
