import CNetwork
import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// A network operation that failed; the message names the link, address or rule.
public struct NetworkError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Links, addresses and routes over rtnetlink (libnl-route-3, in CNetwork).
public enum Netlink {
    static func call(_ body: (UnsafeMutablePointer<CChar>, Int) -> Int32) throws {
        var buf = [CChar](repeating: 0, count: 512)
        let r = buf.withUnsafeMutableBufferPointer { body($0.baseAddress!, $0.count) }
        if r != 0 { throw NetworkError(String(cString: buf)) }
    }

    /// The bridge `name`, made if missing, with `gateway` (address/prefix), up.
    public static func ensureBridge(_ name: String, gateway: IPv4Network) throws {
        try call { crsnap_net_bridge_ensure(name, gateway.address, Int32(gateway.prefix), $0, $1) }
    }

    /// How many links the bridge `name` has attached; nil when there is no such link.
    public static func bridgePorts(_ name: String) throws -> Int? {
        var ports: Int32 = -1
        try call { crsnap_net_bridge_ports(name, &ports, $0, $1) }
        return ports < 0 ? nil : Int(ports)
    }

    /// Deletes the link `name` if there is one (a veth's peer goes with it).
    public static func deleteLink(_ name: String) throws {
        try call { crsnap_net_link_delete(name, $0, $1) }
    }

    /// A veth pair from this namespace's bridge into the network namespace of
    /// `pid`, where `inner` gets `address` and a default route via `gateway`.
    public static func attachVeth(pid: pid_t, hostSide: String, bridge: String, inner: String,
                                  address: IPv4Network, gateway: UInt32) throws {
        try call {
            crsnap_net_veth_attach(pid, hostSide, bridge, inner, address.address, Int32(address.prefix), gateway, $0, $1)
        }
    }

    /// Aborts the TCP connections in the network namespace of `pid` whose
    /// other end is not one of that namespace's sockets (their peers are
    /// outside); returns how many. Those between its own sockets stay.
    public static func closeOutsideConnections(pid: pid_t) throws -> Int {
        var closed: Int32 = 0
        try call { crsnap_net_close_outside_tcp(pid, &closed, $0, $1) }
        return Int(closed)
    }

    /// Whether this network namespace has a link of that name.
    public static func linkExists(_ name: String) -> Bool { if_nametoindex(name) != 0 }

    /// The names of this network namespace's links.
    public static func linkNames() -> [String] {
        guard let list = if_nameindex() else { return [] }
        defer { if_freenameindex(list) }
        var out: [String] = []
        var p = list
        while p.pointee.if_index != 0, let n = p.pointee.if_name {
            out.append(String(cString: n))
            p += 1
        }
        return out
    }
}

/// nftables batches through libnftables, each one transaction. Only batches
/// that `Safety.nftablesRefusal` lets through run: crsnap's own tables, never
/// the ruleset as a whole.
public enum NFTables {
    @discardableResult
    public static func run(_ batch: String, json: Bool = false) throws -> String {
        if let why = Safety.nftablesRefusal(batch) { throw NetworkError("refusing an nftables batch: \(why)") }
        var out: UnsafeMutablePointer<CChar>?
        try Netlink.call { crsnap_nft_run(batch, json ? 1 : 0, &out, $0, $1) }
        defer { free(out) }
        return out.map { String(cString: $0) } ?? ""
    }
}
