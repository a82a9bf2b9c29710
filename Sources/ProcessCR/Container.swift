import CLibmount
import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why a container's first process did not start.
public struct LaunchError: Error, CustomStringConvertible {
    public let stage: String
    public let errno: Int32
    public var description: String { "starting the container: \(stage): \(String(cString: strerror(errno)))" }

    static func stageName(_ s: Int32) -> String {
        switch s {
        case Int32(CRSNAP_STAGE_CGROUP.rawValue): return "joining the freezer cgroup"
        case Int32(CRSNAP_STAGE_MOUNT_PRIVATE.rawValue): return "making mounts private"
        case Int32(CRSNAP_STAGE_BIND_ROOT.rawValue): return "bind-mounting the root"
        case Int32(CRSNAP_STAGE_PIVOT_ROOT.rawValue): return "pivot_root"
        case Int32(CRSNAP_STAGE_DETACH_OLD_ROOT.rawValue): return "detaching the old root"
        case Int32(CRSNAP_STAGE_MOUNT_PROC.rawValue): return "mounting /proc"
        case Int32(CRSNAP_STAGE_HOSTNAME.rawValue): return "setting the hostname"
        case Int32(CRSNAP_STAGE_SETSID.rawValue): return "setsid"
        case Int32(CRSNAP_STAGE_STDIO.rawValue): return "setting up stdio (is /dev/null in the root?)"
        case Int32(CRSNAP_STAGE_CHDIR.rawValue): return "changing to the working directory"
        case Int32(CRSNAP_STAGE_EXEC.rawValue): return "executing the command"
        case Int32(CRSNAP_STAGE_CLONE.rawValue): return "clone with new namespaces"
        case Int32(CRSNAP_STAGE_MOUNT_TMPFS.rawValue): return "mounting a tmpfs"
        case Int32(CRSNAP_STAGE_BIND_VOLUME.rawValue): return "bind-mounting a volume"
        case Int32(CRSNAP_STAGE_SETUID.rawValue): return "switching to the container's user and group"
        case Int32(CRSNAP_STAGE_LOOPBACK.rawValue): return "bringing the loopback device up in the container's network namespace"
        case Int32(CRSNAP_STAGE_HELD.rawValue): return "setting up the container's network"
        default: return "stage \(s)"
        }
    }
}

public struct ContainerSpec {
    public var root: String
    public var hostname: String
    public var argv: [String]
    public var env: [String]
    public var workdir: String = "/"
    public var logFd: Int32
    public var cgroupProcsFd: Int32
    /// Paths inside the container that get a tmpfs.
    public var tmpfs: [String] = []
    /// (host directory, path inside the container) bind mounts.
    public var binds: [(source: String, target: String)] = []
    /// The command's user and group (`run --user`); nil: root.
    public var user: (uid: UInt32, gid: UInt32)?
    /// A network namespace of its own (loopback only), not the caller's.
    public var ownNetwork = false

    public init(root: String, hostname: String, argv: [String], env: [String], logFd: Int32, cgroupProcsFd: Int32) {
        self.root = root
        self.hostname = hostname
        self.argv = argv
        self.env = env
        self.logFd = logFd
        self.cgroupProcsFd = cgroupProcsFd
    }

    public static let defaultEnv = [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME=/root", "TERM=dumb", "LANG=C.UTF-8",
    ]
}

/// Starting processes inside a container's namespaces (the work itself is in C).
public enum Containers {
    /// Starts the container's init; returns its host pid. `prepare`, when
    /// given, runs with the init's pid once its namespaces exist and before it
    /// does anything in them (a network link from outside); if it throws,
    /// the init ends and so does the launch, with that error.
    public static func launch(_ spec: ContainerSpec, prepare: ((pid_t) throws -> Void)? = nil) throws -> pid_t {
        var stage: Int32 = 0
        var err: Int32 = 0
        var hold: [Int32] = [-1, -1]
        if prepare != nil { try Sys.check("pipe", "container launch") { crsnap_pipe2(&hold, O_CLOEXEC) } }
        var reportFd: Int32 = -1
        let pid: pid_t = withCStrings(spec.argv) { argv in
            withCStrings(spec.env) { envp in
                spec.root.withCString { root in
                    spec.hostname.withCString { host in
                        spec.workdir.withCString { wd in
                            withCStrings(spec.tmpfs) { tmpfs in
                                withCStrings(spec.binds.map(\.source)) { sources in
                                    withCStrings(spec.binds.map { spec.root + $0.target }) { targets in
                                        var c = crsnap_container_spec(root: root, hostname: host, argv: argv, envp: envp,
                                                                      workdir: wd, log_fd: spec.logFd,
                                                                      cgroup_procs_fd: spec.cgroupProcsFd, tmpfs: tmpfs,
                                                                      bind_sources: sources, bind_targets: targets,
                                                                      uid: spec.user.map { Int64($0.uid) } ?? -1,
                                                                      gid: spec.user.map { Int64($0.gid) } ?? -1,
                                                                      new_net: spec.ownNetwork ? 1 : 0,
                                                                      hold_fd: hold[0], hold_peer_fd: hold[1])
                                        if prepare != nil { return crsnap_launch_held(&c, &reportFd, &stage, &err) }
                                        return crsnap_launch_container(&c, &stage, &err)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if hold[0] >= 0 { Sys.close(hold[0]) }
        if pid < 0 {
            if hold[1] >= 0 { Sys.close(hold[1]) }
            throw LaunchError(stage: LaunchError.stageName(stage), errno: err)
        }
        guard let prepare else { return pid }
        var failure: Error?
        do { try prepare(pid) } catch { failure = error }
        let r = crsnap_launch_release(pid, reportFd, hold[1], failure == nil ? 1 : 0, &stage, &err)
        if let failure { throw failure }
        if r != 0 { throw LaunchError(stage: LaunchError.stageName(stage), errno: err) }
        return pid
    }

    /// Runs argv in the namespaces of `pid` with this process's stdio; returns its exit status.
    public static func exec(in pid: pid_t, argv: [String], env: [String]) throws -> Int32 {
        Program.wait(try execHelper(pid, argv, env, stdin: -1, stdout: -1, dieWithHelper: false))
    }

    /// Runs argv in the namespaces of `pid` with stdin and stdout from the
    /// given fds (stderr this process's), for at most `timeout` seconds:
    /// its exit status, or nil when it ran out of time (it was killed).
    public static func exec(in pid: pid_t, argv: [String], env: [String], stdin: Int32, stdout: Int32,
                            timeout: Double) throws -> Int32? {
        Program.wait(try execHelper(pid, argv, env, stdin: stdin, stdout: stdout, dieWithHelper: true), timeout: timeout)
    }

    /// The pid of `crsnap_exec_in`'s helper, whose exit status is the command's.
    static func execHelper(_ pid: pid_t, _ argv: [String], _ env: [String], stdin: Int32, stdout: Int32,
                           dieWithHelper: Bool) throws -> pid_t {
        let helper: pid_t = withCStrings(argv) { a in
            withCStrings(env) { e in crsnap_exec_in(pid, a, e, stdin, stdout, dieWithHelper ? 1 : 0) }
        }
        if helper < 0 { throw SystemError("fork", "exec helper", errno: errno) }
        return helper
    }
}
