import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// A host port forwarded to a port of a container (`run --publish`),
/// written "HOSTPORT:CTRPORT/tcp" (the protocol defaults to tcp).
public struct PortMapping: Codable, Hashable, Sendable, CustomStringConvertible {
    public enum Proto: String, Codable, Sendable, CaseIterable { case tcp, udp }
    public var hostPort: UInt16
    public var containerPort: UInt16
    public var proto: Proto

    public init(hostPort: UInt16, containerPort: UInt16, proto: Proto) {
        self.hostPort = hostPort
        self.containerPort = containerPort
        self.proto = proto
    }

    /// Parses "HOSTPORT:CTRPORT[/tcp|/udp]"; nil for anything else.
    public init?(parsing text: String) {
        let slash = text.split(separator: "/", omittingEmptySubsequences: false)
        guard slash.count <= 2 else { return nil }
        var proto = Proto.tcp
        if slash.count == 2 {
            guard let p = Proto(rawValue: String(slash[1])) else { return nil }
            proto = p
        }
        let ports = slash[0].split(separator: ":", omittingEmptySubsequences: false)
        func port(_ s: Substring) -> UInt16? {
            guard !s.isEmpty, s.count <= 5, s.allSatisfy({ $0 >= "0" && $0 <= "9" }), let v = UInt16(s), v > 0 else { return nil }
            return v
        }
        guard ports.count == 2, let h = port(ports[0]), let c = port(ports[1]) else { return nil }
        self.init(hostPort: h, containerPort: c, proto: proto)
    }

    public var description: String { "\(hostPort):\(containerPort)/\(proto.rawValue)" }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let m = PortMapping(parsing: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a port mapping: \(text)"))
        }
        self = m
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// The host's side of bridged containers: a bridge holding the subnet's
/// first address (the containers' gateway), one veth pair per container, and
/// an nftables table of its own, `ip crsnap0` for the bridge crsnap0
/// (outbound NAT, published ports). All of it lives in the network namespace
/// crsnap runs in.
public struct Bridge: Sendable {
    public static let defaultName = "crsnap0"
    public static let defaultSubnet = IPv4Network("10.87.0.0/24")!
    /// The container's end of its veth pair.
    public static let innerName = "eth0"

    public let name: String
    /// The network (address bits below the prefix are zero).
    public let subnet: IPv4Network

    public init(name: String = Bridge.defaultName, subnet: IPv4Network = Bridge.defaultSubnet) {
        self.name = name
        self.subnet = IPv4Network(address: subnet.address & IPv4Network.mask(subnet.prefix), prefix: subnet.prefix)
    }

    /// The bridge's nftables table (in family ip): named after the bridge,
    /// starting with "crsnap" as every table crsnap touches does.
    public var table: String { name.hasPrefix("crsnap") ? name : "crsnap-\(name)" }

    /// The bridge's own address, the containers' default route.
    public var gateway: IPv4Network { IPv4Network(address: subnet.address + 1, prefix: subnet.prefix) }

    /// The addresses containers may get: after the gateway, before the broadcast address.
    public var hostRange: ClosedRange<UInt32>? {
        let last = subnet.address | ~IPv4Network.mask(subnet.prefix)
        guard subnet.prefix <= 30 else { return nil }
        return (subnet.address + 2)...(last - 1)
    }

    /// Why a subnet cannot be the containers' (a usable one has room for a
    /// container and overlaps nothing the host reaches but this bridge), or nil.
    public func subnetRefusal(host: [(network: IPv4Network, what: String)] = Safety.hostNetworks()) -> String? {
        guard hostRange != nil else { return "\(subnet) has no room for containers (a prefix of /30 or shorter is needed)" }
        let others = host.filter { !$0.what.hasSuffix(" on \(name)") && $0.what != "route via \(name)" }
        return Safety.addressRangeRefusal(subnet, host: others)
    }

    /// The host-side veth of the container at `address`: "cs" and the address
    /// in hex, unique while the address is leased, within IFNAMSIZ.
    public static func hostInterface(for address: UInt32) -> String { "cs" + String(format: "%08x", address) }

    /// Whether a link name is one of crsnap's host-side veths.
    public static func isHostInterface(_ name: String) -> Bool {
        name.count == 10 && name.hasPrefix("cs") && name.dropFirst(2).allSatisfy { $0.isHexDigit && !$0.isUppercase }
    }

    /// The address a host-side veth name stands for.
    public static func address(ofHostInterface name: String) -> UInt32? {
        isHostInterface(name) ? UInt32(name.dropFirst(2), radix: 16) : nil
    }

    /// Makes sure the bridge, its address, forwarding and the nftables table
    /// are there (all idempotent: the first container makes them, a reboot
    /// loses them and the next start makes them again).
    public func ensure() throws {
        if let why = subnetRefusal() { throw NetworkError("refusing subnet \(subnet): \(why)") }
        try Netlink.ensureBridge(name, gateway: gateway)
        // Routing for the containers' outbound traffic, and 127.0.0.1 on the
        // host reaching published ports (the packet leaves through the bridge
        // with a loopback source before it is masqueraded).
        try writeSysctl("/proc/sys/net/ipv4/ip_forward", "1")
        try writeSysctl("/proc/sys/net/ipv4/conf/\(name)/route_localnet", "1")
        try NFTables.run(baseRules)
    }

    func writeSysctl(_ path: String, _ value: String) throws {
        if (try? Sys.readText(path))?.trimmingCharacters(in: .whitespacesAndNewlines) == value { return }
        let fd = try Sys.open(path, O_WRONLY)
        defer { Sys.close(fd) }
        try Sys.write(fd, Array((value + "\n").utf8), path)
    }

    /// The table's chains and maps, with their rules replaced in one
    /// transaction (published ports, kept in the maps, stay).
    var baseRules: String {
        let t = "ip \(table)"
        var b = """
        add table \(t)
        add chain \(t) prerouting { type nat hook prerouting priority -100; policy accept; }
        add chain \(t) output { type nat hook output priority -100; policy accept; }
        add chain \(t) postrouting { type nat hook postrouting priority 100; policy accept; }
        add chain \(t) forward { type filter hook forward priority 0; policy accept; }
        add chain \(t) filter_output { type filter hook output priority 0; policy accept; }
        add set \(t) restoring { type ipv4_addr; }

        """
        for p in PortMapping.Proto.allCases {
            b += "add map \(t) \(p.rawValue)_ports { type inet_service : ipv4_addr . inet_service; }\n"
        }
        for chain in ["prerouting", "output", "postrouting", "forward", "filter_output"] { b += "flush chain \(t) \(chain)\n" }
        // A container being restored: new connections to it are reset at
        // once (its address has no link meanwhile, and a SYN lost there is
        // sent again only after a second).
        for chain in ["forward", "filter_output"] {
            b += "add rule \(t) \(chain) ip daddr @restoring meta l4proto tcp reject with tcp reset\n"
        }
        for chain in ["prerouting", "output"] {
            for p in PortMapping.Proto.allCases {
                b += "add rule \(t) \(chain) fib daddr type local dnat ip to \(p.rawValue) dport map @\(p.rawValue)_ports\n"
            }
        }
        b += """
        add rule \(t) postrouting ip saddr \(subnet) ip daddr != \(subnet) masquerade
        add rule \(t) postrouting ct status dnat ip saddr \(subnet) ip daddr \(subnet) masquerade
        add rule \(t) postrouting ip saddr 127.0.0.0/8 oifname "\(name)" masquerade
        add rule \(t) forward iifname "\(name)" accept
        add rule \(t) forward oifname "\(name)" accept

        """
        return b
    }

    /// Connects the network namespace of `pid` (a container's init, not yet
    /// running its command) to the bridge with `address`.
    public func attach(pid: pid_t, address: IPv4Network) throws {
        let host = Bridge.hostInterface(for: address.address)
        // A link left by the container's previous namespace (its end goes
        // away asynchronously) or by a crash.
        try Netlink.deleteLink(host)
        try Netlink.attachVeth(pid: pid, hostSide: host, bridge: name, inner: Bridge.innerName,
                               address: address, gateway: gateway.address)
    }

    /// CRIU's external for the container's end of the veth pair: on restore
    /// CRIU makes the pair itself, the host end named as before and added to
    /// the bridge.
    public func criuExternal(address: UInt32, hostSide: String? = nil, bridged: Bool = true) -> String {
        "veth[\(Bridge.innerName)]:\(hostSide ?? Bridge.hostInterface(for: address))" + (bridged ? "@\(name)" : "")
    }

    /// Removes the bridge and its table when nothing is attached to the
    /// bridge any more; returns whether it did.
    @discardableResult
    public func removeIfUnused() throws -> Bool {
        if let ports = try Netlink.bridgePorts(name), ports > 0 { return false }
        try Netlink.deleteLink(name)
        let tables = try NFTables.run("list tables ip")
        if tables.split(separator: "\n").contains(where: { $0.trimmingCharacters(in: .whitespaces) == "table ip \(table)" }) {
            try NFTables.run("delete table ip \(table)")
        }
        return true
    }

    /// Resets new TCP connections to `address` until `stopRefusing` (while
    /// its container is killed and restored).
    public func refuseWhileRestoring(_ address: UInt32) throws {
        try NFTables.run("add element ip \(table) restoring { \(Bridge.dotted(address)) }")
    }

    public func stopRefusing(_ address: UInt32) throws {
        do {
            try NFTables.run("delete element ip \(table) restoring { \(Bridge.dotted(address)) }")
        } catch let e as NetworkError where e.description.contains("No such file or directory") {
            // not refused (or no table): nothing to do
        }
    }

    /// Forwards the host ports to `address` (idempotent).
    public func publish(_ ports: [PortMapping], to address: UInt32) throws {
        guard !ports.isEmpty else { return }
        let a = Bridge.dotted(address)
        let batch = ports.map {
            "add element ip \(table) \($0.proto.rawValue)_ports { \($0.hostPort) : \(a) . \($0.containerPort) }"
        }.joined(separator: "\n")
        try NFTables.run(batch)
    }

    /// Stops forwarding the host ports; ports not forwarded are fine.
    public func unpublish(_ ports: [PortMapping]) throws {
        let current = try published()
        let batch = ports.filter { current[$0.proto]?[$0.hostPort] != nil }.map {
            "delete element ip \(table) \($0.proto.rawValue)_ports { \($0.hostPort) }"
        }.joined(separator: "\n")
        if !batch.isEmpty { try NFTables.run(batch) }
    }

    /// The forwarded host ports: protocol → host port → (address, container port).
    public func published() throws -> [PortMapping.Proto: [UInt16: (address: UInt32, port: UInt16)]] {
        var out: [PortMapping.Proto: [UInt16: (address: UInt32, port: UInt16)]] = [:]
        for p in PortMapping.Proto.allCases {
            let text: String
            do {
                text = try NFTables.run("list map ip \(table) \(p.rawValue)_ports", json: true)
            } catch {
                continue  // no table yet: nothing published
            }
            out[p] = Bridge.mapElements(json: text)
        }
        return out
    }

    /// The elements of a listed map, `{"nftables": [..., {"map": {"elem":
    /// [[8080, {"concat": ["10.87.0.2", 80]}], ...]}}]}`.
    static func mapElements(json: String) -> [UInt16: (address: UInt32, port: UInt16)] {
        var out: [UInt16: (address: UInt32, port: UInt16)] = [:]
        guard let top = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
              let items = top["nftables"] as? [[String: Any]] else { return out }
        for item in items {
            guard let map = item["map"] as? [String: Any], let elems = map["elem"] as? [[Any]] else { continue }
            for e in elems where e.count == 2 {
                guard let key = e[0] as? Int, let hp = UInt16(exactly: key),
                      let concat = (e[1] as? [String: Any])?["concat"] as? [Any], concat.count == 2,
                      let addr = (concat[0] as? String).flatMap(IPv4Network.init), let cp = (concat[1] as? Int).flatMap(UInt16.init(exactly:))
                else { continue }
                out[hp] = (addr.address, cp)
            }
        }
        return out
    }

    /// "10.87.0.2".
    public static func dotted(_ a: UInt32) -> String { "\(a >> 24).\(a >> 16 & 255).\(a >> 8 & 255).\(a & 255)" }

    /// Whether a process on the host listens on (TCP) or holds (UDP) the port
    /// on any address: a bind to the wildcard address fails then.
    public static func portInUse(_ m: PortMapping) -> Bool {
        let s = socket(AF_INET, (m.proto == .tcp ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue)) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { return false }
        defer { close(s) }
        var one: Int32 = 1
        if m.proto == .tcp { _ = setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = m.hostPort.bigEndian
        sa.sin_addr.s_addr = 0
        let r = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        return r != 0 && errno == EADDRINUSE
    }
}
