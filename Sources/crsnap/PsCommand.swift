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
        LAST EXIT is how the container's init last ended: exit N, signal N,
        stopped (crsnap stop), poweroff (a reboot system call inside with
        power-off or halt: it stays stopped), reboot (one with restart: its
        command was started again in fresh namespaces over the same files;
        the number of restarts in parentheses), reboot-loop (more than 5
        reboots within 30 s: left stopped); - when it has not ended. The
        kernel tells a reboot as the init's death by SIGHUP (restart) or SIGINT
        (power-off, halt), so an init killed by an unhandled SIGHUP restarts
        too, as in LXC.
        --json prints: name, state, pid, backend, network, address (CIDR, or
        null), publish (["HOSTPORT:CTRPORT/tcp", ...]), snapshots, reason
        when the processes are gone, last_exit (reason: exited, killed,
        stopped, poweroff, reboot, reboot-loop; status or signal; at) and
        restarts.
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
        var last_exit: LastExit?
        var restarts: Int?
    }

    func run() throws {
        try reporting {
            let path = try Store.resolvePath(storeOptions.store)
            if !FileManager.default.fileExists(atPath: path) {
                return json ? try printJSON([Row]()) : printTable(["NAME", "STATE", "PID", "BACKEND", "NETWORK", "SNAPSHOTS", "LAST EXIT"], [])
            }
            let store = try Store.open(path)
            let rows: [Row] = store.containerNames().compactMap { n in
                guard let c = try? Container(store: store, name: n), let cfg = try? c.config() else { return nil }
                let (running, reason) = c.liveness
                let state = c.state()
                return Row(name: n, state: running ? "running" : "stopped", pid: running ? state?.initPid : nil,
                           backend: "\(store.backend.name)/\(cfg.kind.rawValue)", network: cfg.networkMode.rawValue,
                           address: cfg.bridgeAddress?.description, publish: (cfg.publish ?? []).map(\.description),
                           snapshots: c.snapshotNumbers().count,
                           reason: reason, last_exit: state?.lastExit, restarts: state?.restarts)
            }
            if json { return try printJSON(rows) }
            printTable(["NAME", "STATE", "PID", "BACKEND", "NETWORK", "SNAPSHOTS", "LAST EXIT"],
                       rows.map { [$0.name, $0.state + ($0.reason == nil ? "" : "*"), $0.pid.map(String.init) ?? "-", $0.backend,
                                   $0.network + ($0.address.map { " \($0)" } ?? ""), String($0.snapshots),
                                   ($0.last_exit?.short ?? "-") + ($0.restarts.map { " (\($0))" } ?? "")] })
            for r in rows { if let why = r.reason { print("* \(r.name): \(why)") } }
        }
    }
}
