import ArgumentParser
import CrsnapCore
import Foundation

struct TopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "List a running container's processes as the host sees them.",
        discussion: """
        One line per process of the container (every task in its cgroup),
        ordered by its pid inside: HOST-PID, the pid on the host, which a
        debugger or profiler on the host attaches to (gdb -p, perf record -p,
        strace -p); PID and PPID inside the container's pid namespace (what
        `crsnap exec NAME -- ps` shows; the init's parent is crsnap's monitor,
        outside, shown as -); THREADS; STATE; UID; RSS; COMMAND (its command
        line, or [name] without one). With --threads, each thread below its
        process: its id on the host (gdb's LWP) and inside, its name and state.
        A snapshot of /proc, once: a task that ends while it is read is left
        out. --json prints: host_pid, pid, ppid, threads, state, uid,
        rss_bytes, command, and with --threads thread_list (host_tid, tid,
        name, state).
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Flag(help: "List each process's threads too.") var threads = false
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "Container name.") var name: String

    func run() throws {
        try reporting {
            try Names.validate(name)
            let rows = try Top.tasks(store: try storeOptions.openExisting(), name: name, threads: threads)
            if json { return try printJSON(rows) }
            var table: [[String]] = []
            for r in rows {
                table.append([String(r.host_pid), String(r.pid), r.ppid.map(String.init) ?? "-", String(r.threads),
                              r.state, String(r.uid), formatBytes(r.rss_bytes), oneLine(r.command)])
                for t in r.thread_list ?? [] {
                    table.append(["  \(t.host_tid)", "  \(t.tid)", "", "", t.state, "", "", "  thread \(t.name)"])
                }
            }
            printTable(["HOST-PID", "PID", "PPID", "THREADS", "STATE", "UID", "RSS", "COMMAND"], table)
        }
    }
}

/// A command line on one table line: control characters (a `python3 -c`
/// program's newlines) become spaces; --json keeps them.
func oneLine(_ s: String) -> String {
    String(s.unicodeScalars.map { $0.properties.generalCategory == .control ? " " : Character($0) })
}
