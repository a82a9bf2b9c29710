import ArgumentParser
import CrsnapCore
import Foundation

struct ShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show what a snapshot captured.",
        discussion: """
        Lists the processes in its CRIU images (pids as inside the container,
        parents first, with their threads and names), the snapshot's file
        systems and how each was captured (btrfs
        snapshot, reflinked copy, copy), the unlinked open files it holds (the
        path they had, size, held as an fd and/or mapped, and whether their
        bytes were reflinked or copied), its tmpfs mounts (their contents are in
        the CRIU images) and its volumes (snapshotted when the volume is a btrfs
        subvolume on the store's filesystem, otherwise not rolled back) and the
        container's paths kept across rollback (run --keep), its network
        (run --network: none or bridge, a namespace of its own that the CRIU
        images hold, with a bridged container's address and published ports;
        host, the host's, which they do not), and what it costs
        on disk: its images, and of its files' data the bytes no other
        snapshot or the live container shares (what deleting it frees now).
        fs_total_bytes, fs_exclusive_bytes in --json (null: the filesystem
        cannot tell).
        --json prints: id, container, tag, type, created, stopped, fs_only, criu_version,
        processes (pid, ppid, pgid, sid, threads, comm; processes_error when
        the images do not give them), filesystems, unlinked, tmpfs, volumes, kept, network, address,
        publish, fs_total_bytes,
        fs_exclusive_bytes, stats, container_state (running
        or stopped) and container_reason (when the container's processes are
        gone without crsnap stopping them: a reboot, an ended pid namespace),
        clocks (monotonic, boottime: the seconds the container's clocks read
        at the take; null for files only) and container_clock_offsets
        (monotonic, boottime: the running container's time namespace against
        the host's clocks, in seconds; null when it is stopped).
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "Snapshot id, NAME@N.") var id: String

    func run() throws {
        try reporting {
            let sid = try SnapshotID(parsing: id)
            let d = try Show.describe(store: try storeOptions.openExisting(), id: sid)
            if json { return try printJSON(d) }
            print("\(d.id)  \(d.type)\(d.fs_only ? ", files only (no processes)" : "")\(d.stopped ? ", stopped" : "")  created \(formatDate(d.created))"
                  + (d.tag.map { "  tag \($0)" } ?? "") + (d.stats.pause_ms.map { String(format: "  paused %.0f ms", $0) } ?? "")
                  + String(format: "  frozen %.0f ms", d.stats.frozen_ms))
            print("container \(d.container): \(d.container_state)" + (d.container_reason.map { " — \($0)" } ?? ""))
            if let k = d.clocks {
                print(String(format: "clocks at the take: monotonic %.3f s, boottime %.3f s (the container's time namespace; restored, they carry on from here)",
                             k.monotonic, k.boottime))
            }
            if let o = d.container_clock_offsets {
                print(String(format: "its time namespace now: monotonic %+.3f s, boottime %+.3f s from the host's", o.monotonic, o.boottime))
            }
            print("\nSIZE: images \(formatBytes(d.stats.images_bytes)); files \(d.fs_exclusive_bytes.map(formatBytes) ?? "?") exclusive"
                  + (d.fs_total_bytes.map { " of \(formatBytes($0)) in all" } ?? " (the filesystem cannot tell)"))
            print("\nPROCESSES" + (d.criu_version.map { " (CRIU \($0))" } ?? ""))
            if let why = d.processes_error {
                print("unreadable: \(why)")
            } else if d.processes.isEmpty {
                print("none (files only)")
            } else {
                printTable(["PID", "PPID", "THREADS", "COMM"], d.processes.map { ["\($0.pid)", "\($0.ppid)", "\($0.threads)", $0.comm] })
            }
            print("\nFILE SYSTEMS")
            printTable(["MOUNT", "HOLDS", "CAPTURED", "SNAPSHOT"], d.filesystems.map {
                [$0.mount, $0.holds, $0.captured + ($0.read_only == true ? ", read-only" : ""), $0.snapshot]
            })
            print("\nUNLINKED OPEN FILES")
            if d.unlinked.isEmpty {
                print("none")
            } else {
                printTable(["PATH", "SIZE", "OPEN AS", "CAPTURED"], d.unlinked.map {
                    [$0.path, formatBytes($0.size), [$0.held ? "fd" : nil, $0.mapped ? "mapped" : nil].compactMap { $0 }.joined(separator: "+"),
                     $0.captured]
                })
            }
            print("\nTMPFS")
            if d.tmpfs.isEmpty { print("none") } else { printTable(["MOUNT", "CAPTURED"], d.tmpfs.map { [$0.mount, $0.captured] }) }
            print("\nVOLUMES")
            if d.volumes.isEmpty {
                print("none")
            } else {
                printTable(["MOUNT", "HOST", "ROLLED BACK"], d.volumes.map {
                    [$0.mount, $0.host, $0.snapshotted ? "yes (btrfs snapshot \($0.snapshot ?? ""))" : "no (not a btrfs subvolume on the store)"]
                })
            }
            print("\nKEPT ACROSS ROLLBACK (their contents now replace the snapshot's)")
            print(d.kept.isEmpty ? "none" : d.kept.joined(separator: "\n"))
            print("\nNETWORK")
            switch d.network {
            case "host":
                print("host: the host's network namespace, not in the snapshot (TCP connections come back closed after a rollback)")
            case "bridge":
                print("bridge: a network namespace of its own on the host's bridge, in the CRIU images; address \(d.address ?? "?")"
                      + (d.publish.isEmpty ? "" : "; published \(d.publish.joined(separator: ", "))"))
            default:
                print("\(d.network): a network namespace of its own, in the CRIU images (loopback only; TCP connections come back established)")
            }
        }
    }
}
