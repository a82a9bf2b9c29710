import ArgumentParser
import CrsnapCore
import Foundation

struct PsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ps", abstract: "List containers.",
        discussion: """
        STATE is running while the container's monitor and init run — the very
        processes crsnap started or restored (pid, start time, boot, pid
        namespace), not
        whatever has their pid numbers now. A container whose processes are
        gone without crsnap stopping it (the machine rebooted, or the pid
        namespace it ran in ended) is stopped, marked *, with the reason under
        the table; resume, stop, rm and doctor --repair work on it.
        NETWORK is run --network's mode: host (the host's network namespace),
        none (one of its own, loopback only) or bridge (one of its own on the
        host's bridge), with a bridged container's address.
        --json prints: name, state, pid, backend, network, address (CIDR, or
        null), publish (["HOSTPORT:CTRPORT/tcp", ...]), snapshots, and reason
        when the processes are gone.
        """)

    @OptionGroup var storeOptions: StoreOptions
    @Flag(help: "Print JSON.") var json = false

    struct Row: Encodable {
        var name: String
        var state: String
        var pid: Int32?
        var backend: String
        var network: String
        var address: String?
        var publish: [String]
        var snapshots: Int
        /// Set when the container was running but its processes are gone.
        var reason: String?
    }

    func run() throws {
        try reporting {
            let path = try Store.resolvePath(storeOptions.store)
            if !FileManager.default.fileExists(atPath: path) {
                return json ? try printJSON([Row]()) : printTable(["NAME", "STATE", "PID", "BACKEND", "NETWORK", "SNAPSHOTS"], [])
            }
            let store = try Store.open(path)
            let rows: [Row] = store.containerNames().compactMap { n in
                guard let c = try? Container(store: store, name: n), let cfg = try? c.config() else { return nil }
                let (running, reason) = c.liveness
                return Row(name: n, state: running ? "running" : "stopped", pid: running ? c.state()?.initPid : nil,
                           backend: "\(store.backend.name)/\(cfg.kind.rawValue)", network: cfg.networkMode.rawValue,
                           address: cfg.bridgeAddress?.description, publish: (cfg.publish ?? []).map(\.description),
                           snapshots: c.snapshotNumbers().count,
                           reason: reason)
            }
            if json { return try printJSON(rows) }
            printTable(["NAME", "STATE", "PID", "BACKEND", "NETWORK", "SNAPSHOTS"],
                       rows.map { [$0.name, $0.state + ($0.reason == nil ? "" : "*"), $0.pid.map(String.init) ?? "-", $0.backend,
                                   $0.network + ($0.address.map { " \($0)" } ?? ""), String($0.snapshots)] })
            for r in rows { if let why = r.reason { print("* \(r.name): \(why)") } }
        }
    }
}
