import ArgumentParser
import CrsnapCore

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Start a command as a container, detached.",
        discussion: """
        The container gets its own mount, pid, uts, ipc and time namespaces (its
        CLOCK_MONOTONIC and CLOCK_BOOTTIME carry on from a snapshot's values
        after a rollback or resume; the wall clock is the host's).
        Without --rootfs the root is an overlay: the host's / read-only below, the
        container's changes in a btrfs subvolume above, with a private /tmp and
        /dev. With --rootfs DIR the root is a btrfs subvolume made from DIR (a
        snapshot if DIR is a subvolume on the store, else a reflink copy).
        --tmpfs PATH mounts a tmpfs there instead (its contents are saved in the
        CRIU images, copied inside the freeze). The command's stdout and stderr
        go to the container's log (crsnap logs).
        --keep PATH (e.g. /var/log) declares a path in the root whose contents
        survive a rollback: the files there when the processes are stopped
        replace the snapshot's (they are outside the snapshot's one instant; a
        file the snapshot's processes hold open there must keep its size,
        unless it is a log they opened write-only with O_APPEND).
        Prints nothing on success.
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Option(help: ArgumentHelp("Make the root a btrfs subvolume from this directory.", valueName: "dir"))
    var rootfs: String?
    @Option(help: "Hostname inside the container (default: the container name).")
    var hostname: String?
    @Option(name: .customLong("env"), help: ArgumentHelp("Set an environment variable (repeatable).", valueName: "KEY=VALUE"))
    var env: [String] = []
    @Option(help: ArgumentHelp("Mount a tmpfs at this path inside the container (repeatable, e.g. /tmp, /dev/shm); its contents are checkpointed and restored with the processes.", valueName: "path"))
    var tmpfs: [String] = []
    @Option(help: ArgumentHelp("Bind-mount a host directory into the container (repeatable). Its contents are rolled back only when HOST is a btrfs subvolume on the store's filesystem (then it is snapshotted in the same instant).", valueName: "HOST:CONTAINER"))
    var volume: [String] = []
    @Option(help: ArgumentHelp("Run the command as this user and group (numbers; GID defaults to UID; no supplementary groups). CRIU dumps a task of another user only with CAP_SYS_RESOURCE (crsnap doctor NAME says).", valueName: "UID[:GID]"))
    var user: String?
    @Option(help: ArgumentHelp("host: share the host's network (the default); none: a network namespace of its own with loopback only; bridge: one of its own joined to the host's bridge (crsnap network) with an address of its own, outbound NAT and --publish. An own namespace is checkpointed and restored with the processes (its address stays; CRIU locks its network while it restores it).", valueName: "mode"))
    var network: String?
    @Option(help: ArgumentHelp("With --network bridge: the container's address (default: the lowest free one of the store's subnet).", valueName: "A.B.C.D"))
    var address: String?
    @Option(help: ArgumentHelp("With --network bridge: forward a host port to a port of the container (repeatable). The host reaches it on any of its addresses, 127.0.0.1 included.", valueName: "HOSTPORT:CTRPORT[/tcp|udp]"))
    var publish: [String] = []
    @Option(help: ArgumentHelp("Keep this path's current contents across rollback (repeatable, e.g. /var/log).", valueName: "path"))
    var keep: [String] = []
    @Argument(help: "Container name: letters, digits, '-', '_', '.'; no leading dot; at most 64.")
    var name: String
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
    var command: [String] = []

    func run() throws {
        try reporting {
            var o = RunOptions(name: name, command: command, rootfs: rootfs, hostname: hostname, env: env, tmpfs: tmpfs)
            o.volumes = volume
            o.keep = keep
            o.user = user
            o.network = network
            o.address = address
            o.publish = publish
            try Lifecycle.validate(o)
            try Lifecycle.run(store: try storeOptions.open(), o)
        }
    }
}
