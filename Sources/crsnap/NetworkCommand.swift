import ArgumentParser
import CrsnapCore
import Foundation

struct NetworkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network",
        abstract: "Show or set the bridge and subnet of bridged containers.",
        discussion: """
        Containers run with --network bridge join the store's bridge (default
        crsnap0) by a veth pair and get an address of its subnet (default
        10.87.0.0/24; the bridge holds the first address, their gateway). The
        bridge, forwarding and the bridge's nftables table ("ip crsnap0";
        "ip crsnap-NAME" for a bridge whose name does not start with crsnap:
        outbound NAT, published ports) are made in the network namespace crsnap
        runs in when a bridged container starts; the bridge and its table go
        with the store's last bridged container. A container's address is its
        lease, kept in its config until crsnap rm.
        """,
        subcommands: [NetworkShowCommand.self, NetworkSetCommand.self],
        defaultSubcommand: NetworkShowCommand.self
    )
}

struct NetworkShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show the bridge, the subnet and each bridged container's address and published ports.",
        discussion: "--json prints: bridge, subnet, gateway (CIDR), leases [{container, address, publish}]."
    )

    @OptionGroup var storeOptions: StoreOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try reporting {
            let r = try Networks.report(store: try storeOptions.openExisting())
            if json { return try printJSON(r) }
            print("bridge \(r.bridge)  subnet \(r.subnet)  gateway \(r.gateway)")
            if r.leases.isEmpty { return print("no bridged containers") }
            printTable(["CONTAINER", "ADDRESS", "PUBLISHED"], r.leases.map {
                [$0.container, $0.address, $0.publish.isEmpty ? "-" : $0.publish.map(\.description).joined(separator: ",")]
            })
        }
    }
}

struct NetworkSetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Set the store's bridge name or subnet (while no container holds an address).",
        discussion: """
        The subnet must not overlap a route or an address the host has. Prints
        nothing on success.
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Option(help: ArgumentHelp("The bridge's name (at most 15 letters, digits, '-', '_').", valueName: "name"))
    var bridge: String?
    @Option(help: ArgumentHelp("The containers' IPv4 subnet, e.g. 10.87.0.0/24.", valueName: "A.B.C.D/N"))
    var subnet: String?

    func run() throws {
        try reporting {
            guard bridge != nil || subnet != nil else {
                throw CrsnapError(.usage, "nothing to set: give --bridge or --subnet")
            }
            try Networks.set(store: try storeOptions.open(), bridge: bridge, subnet: subnet)
        }
    }
}
