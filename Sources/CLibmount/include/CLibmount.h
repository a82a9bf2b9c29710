// The C side of crsnap: libmount and libbtrfsutil as they are, plus small shims
// for what Swift cannot do safely itself. A Swift process is multithreaded, so
// everything that runs between fork/clone and execve lives here and calls only
// async-signal-safe functions.
#ifndef CRSNAP_CLIBMOUNT_H
#define CRSNAP_CLIBMOUNT_H

#include <libmount/libmount.h>
#include <btrfsutil.h>
#include <sys/types.h>
#include <stdint.h>
#include <sys/xattr.h>
#include <sys/file.h>
#include <sys/vfs.h>

/// What the container's first process gets. All strings are host paths unless
/// said otherwise; the arrays are NULL-terminated.
struct crsnap_container_spec {
    const char *root;              // mount point of the container's root, on the host
    const char *hostname;          // set in the new uts namespace
    const char *const *argv;       // argv[0] is looked up in PATH of envp
    const char *const *envp;
    const char *workdir;           // inside the container; "/" when NULL
    int log_fd;                    // becomes fd 1 and 2
    int cgroup_procs_fd;           // the container joins this cgroup ("0" is written), -1: none
    const char *const *tmpfs;      // mount points (inside) that get a tmpfs; NULL-terminated, may be NULL
    const char *const *bind_sources; // host directories bind-mounted into the root; NULL-terminated, may be NULL
    const char *const *bind_targets; // where, as host paths below `root`; as many as bind_sources
    long long uid;                 // the command's user and group (no supplementary groups); -1: stay root
    long long gid;
    int new_net;                   // 1: a network namespace of its own with the loopback device up
    int hold_fd;                   // >= 0: read end of a pipe; the child waits for a byte on it before
                                   // anything but joining the cgroup (see crsnap_launch_held), -1: none
    int hold_peer_fd;              // the pipe's write end, which the child closes first; -1: none
};

/// Where a container launch failed, reported through a close-on-exec pipe.
enum crsnap_launch_stage {
    CRSNAP_STAGE_CGROUP = 1,
    CRSNAP_STAGE_MOUNT_PRIVATE,
    CRSNAP_STAGE_BIND_ROOT,
    CRSNAP_STAGE_PIVOT_ROOT,
    CRSNAP_STAGE_DETACH_OLD_ROOT,
    CRSNAP_STAGE_MOUNT_PROC,
    CRSNAP_STAGE_HOSTNAME,
    CRSNAP_STAGE_SETSID,
    CRSNAP_STAGE_STDIO,
    CRSNAP_STAGE_CHDIR,
    CRSNAP_STAGE_EXEC,
    CRSNAP_STAGE_CLONE,
    CRSNAP_STAGE_SETNS,
    CRSNAP_STAGE_FORK,
    CRSNAP_STAGE_MOUNT_TMPFS,
    CRSNAP_STAGE_BIND_VOLUME,
    CRSNAP_STAGE_SETUID,
    CRSNAP_STAGE_UNSHARE,
    CRSNAP_STAGE_LOOPBACK,
    CRSNAP_STAGE_HELD,
};

/// Starts the container's init in new mount, pid, uts and ipc namespaces:
/// private mounts, volumes bind-mounted into spec->root, pivot_root into it, old root detached, /proc mounted,
/// tmpfs mounts, a new session, stdin from the container's /dev/null, stdout and stderr to
/// log_fd, every other fd closed, then execve.
/// Returns the host pid, or -1 with *stage and *err set (the child is reaped).
pid_t crsnap_launch_container(const struct crsnap_container_spec *spec, int *stage, int *err);

/// Like crsnap_launch_container for a spec with hold_fd: returns as soon as
/// the child exists (in its namespaces, in the cgroup, waiting), with the
/// read end of its report pipe in *report_fd, so that the caller can set up
/// what the namespaces need from outside (a network link). Then
/// crsnap_launch_release lets it go on (`proceed`) or makes it fail
/// (CRSNAP_STAGE_HELD), closes hold_write, and waits for its report as
/// crsnap_launch_container does: 0, or -1 with *stage and *err set.
pid_t crsnap_launch_held(const struct crsnap_container_spec *spec, int *report_fd, int *stage, int *err);
int crsnap_launch_release(pid_t pid, int report_fd, int hold_write, int proceed, int *stage, int *err);

/// Runs argv inside the namespaces (ipc, uts, pid, mnt) of `target` with the
/// caller's stdio, or `in_fd` / `out_fd` as its stdin / stdout where they are
/// >= 0. Returns the pid of a helper whose exit status is the command's (127
/// with a message on stderr if it could not be started). With
/// `die_with_helper` the command is SIGKILLed when the helper dies (killing
/// the helper is how a caller stops it: the command itself is in the
/// container's pid namespace).
pid_t crsnap_exec_in(pid_t target, const char *const argv[], const char *const envp[],
                     int in_fd, int out_fd, int die_with_helper);

/// fork + execve with fd i of the child set to fdmap[i] (-1: closed) for i < nfds,
/// all other fds closed, optionally in a new session. Returns the pid or -1 (errno).
pid_t crsnap_spawn(const char *path, const char *const argv[], const char *const envp[],
                   const int *fdmap, int nfds, int new_session);

/// Like crsnap_spawn (no new session), but the program runs as pid 1 of new
/// pid, mount and network namespaces: every mount made private, a /proc of
/// its own, the loopback device up and no other network. Returns the pid of a
/// helper in the caller's namespaces whose exit status is the program's; the
/// program is SIGKILLed when the helper dies, and whatever it started dies
/// with it (its pid namespace ends). -1 with *stage and *err set when it
/// could not be started.
pid_t crsnap_spawn_isolated(const char *path, const char *const argv[], const char *const envp[],
                            const int *fdmap, int nfds, int *stage, int *err);

int crsnap_pipe2(int fds[2], int flags);
int crsnap_set_child_subreaper(void);
int crsnap_syncfs(int fd);
int crsnap_close_range_from(int first);

/// FICLONE: make `dst` share all of `src`'s extents (both open files of one
/// filesystem). 0 or -1 (errno: EXDEV, EOPNOTSUPP, EINVAL where it cannot).
int crsnap_ficlone(int dst, int src);

/// A pidfd for `pid` (pidfd_open). -1 (errno) where it cannot.
int crsnap_pidfd_open(pid_t pid);

/// UFFDIO_WAKE of [start, start+len) on the userfaultfd that process
/// `pidfd` has open as `fd` (taken with pidfd_getfd, closed again): threads
/// waiting on a fault there retry it. 0 or -1 (errno).
int crsnap_uffd_wake(int pidfd, int fd, unsigned long long start, unsigned long long len);

/// One unix socket of the caller's network namespace as sock_diag reports it.
struct crsnap_unix_socket {
    uint32_t ino;
    /// The inode of the socket it is connected to; 0 when none.
    uint32_t peer;
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    uint8_t type;
    /// Its bound path (or abstract name, with a leading '@'); empty when unbound.
    char name[109];
};

/// Lists up to `max` unix sockets of the caller's network namespace
/// (NETLINK_SOCK_DIAG, UDIAG_SHOW_PEER | UDIAG_SHOW_NAME). Returns how many,
/// or -1 with errno set.
int crsnap_unix_sockets(struct crsnap_unix_socket *out, int max);
/// The same for the network namespace of `pid` (its sock_diag socket is made
/// there by this thread, which then returns to its own namespace).
int crsnap_unix_sockets_in(pid_t pid, struct crsnap_unix_socket *out, int max);

/// Data extents of the regular files below `root` (one filesystem; nested
/// subvolumes and mounts are not entered), as FIEMAP reports them: all of
/// their bytes into *total and those of extents no other file or snapshot
/// shares (no FIEMAP_EXTENT_SHARED) into *exclusive; as `btrfs filesystem
/// du` counts: inline, delalloc and unknown extents left out, a file with
/// several names once. Returns 0, or -1 with errno set (EOPNOTSUPP: the
/// filesystem has no FIEMAP). Not thread-safe.
int crsnap_extent_bytes(const char *root, uint64_t *total, uint64_t *exclusive);

#endif
