#define _GNU_SOURCE
#include "CLibmount.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/close_range.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <linux/fiemap.h>
#include <ftw.h>
#include <search.h>
#include <grp.h>
#include <net/if.h>

extern char **environ;

// Everything below that runs in a child uses async-signal-safe calls only.

static void write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return;
        }
        p += n;
        len -= (size_t)n;
    }
}

static void fail_child(int errfd, int stage) {
    int report[2] = {stage, errno};
    write_all(errfd, report, sizeof report);
    _exit(127);
}

/// Marks every fd from `first` on close-on-exec (they vanish at execve, yet an
/// error pipe among them stays usable until then).
static int cloexec_from(unsigned int first) {
    return (int)syscall(SYS_close_range, first, ~0U, CLOSE_RANGE_CLOEXEC);
}

/// Waits for a child's report on the read end of its close-on-exec error
/// pipe: EOF means it reached execve. On a report the child is reaped and
/// 1 is returned with report[] filled in.
static int await_report(int fd, pid_t pid, int report[2]) {
    ssize_t n;
    do {
        n = read(fd, report, 2 * sizeof(int));
    } while (n < 0 && errno == EINTR);
    close(fd);
    if (n != (ssize_t)(2 * sizeof(int))) return 0;
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    return 1;
}

/// Brings the loopback device of the current network namespace up.
static int loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    int r = ioctl(s, SIOCGIFFLAGS, &ifr);
    if (r == 0) {
        ifr.ifr_flags |= IFF_UP;
        r = ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    close(s);
    return r;
}

struct launch_arg {
    const struct crsnap_container_spec *spec;
    int errfd;
};

static int container_main(void *p) {
    const struct launch_arg *a = p;
    const struct crsnap_container_spec *s = a->spec;
    int errfd = a->errfd;

    if (s->hold_peer_fd >= 0) close(s->hold_peer_fd);
    if (s->cgroup_procs_fd >= 0 && write(s->cgroup_procs_fd, "0", 1) != 1)
        fail_child(errfd, CRSNAP_STAGE_CGROUP);
    if (s->hold_fd >= 0) {
        char go = 0;
        ssize_t n;
        do {
            n = read(s->hold_fd, &go, 1);
        } while (n < 0 && errno == EINTR);
        if (n != 1) {
            errno = ECANCELED;
            fail_child(errfd, CRSNAP_STAGE_HELD);
        }
        close(s->hold_fd);
    }
    if (s->new_net && loopback_up() != 0)
        fail_child(errfd, CRSNAP_STAGE_LOOPBACK);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        fail_child(errfd, CRSNAP_STAGE_MOUNT_PRIVATE);
    if (mount(s->root, s->root, NULL, MS_BIND, NULL) != 0)
        fail_child(errfd, CRSNAP_STAGE_BIND_ROOT);
    for (int i = 0; s->bind_sources && s->bind_sources[i]; i++) {
        if (mount(s->bind_sources[i], s->bind_targets[i], NULL, MS_BIND | MS_REC, NULL) != 0)
            fail_child(errfd, CRSNAP_STAGE_BIND_VOLUME);
    }
    if (chdir(s->root) != 0)
        fail_child(errfd, CRSNAP_STAGE_PIVOT_ROOT);
    // pivot_root(".", ".") stacks the old root on top of the new one;
    // detaching "." then leaves only the new root.
    if (syscall(SYS_pivot_root, ".", ".") != 0)
        fail_child(errfd, CRSNAP_STAGE_PIVOT_ROOT);
    if (umount2(".", MNT_DETACH) != 0)
        fail_child(errfd, CRSNAP_STAGE_DETACH_OLD_ROOT);
    if (chdir("/") != 0)
        fail_child(errfd, CRSNAP_STAGE_DETACH_OLD_ROOT);
    (void)mkdir("/proc", 0555);
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        fail_child(errfd, CRSNAP_STAGE_MOUNT_PROC);
    for (const char *const *t = s->tmpfs; t && *t; t++) {
        (void)mkdir(*t, 0755);
        if (mount("tmpfs", *t, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") != 0)
            fail_child(errfd, CRSNAP_STAGE_MOUNT_TMPFS);
    }
    if (s->hostname && sethostname(s->hostname, strlen(s->hostname)) != 0)
        fail_child(errfd, CRSNAP_STAGE_HOSTNAME);
    if (setsid() < 0)
        fail_child(errfd, CRSNAP_STAGE_SETSID);
    int null_fd = open("/dev/null", O_RDWR);
    if (null_fd < 0)
        fail_child(errfd, CRSNAP_STAGE_STDIO);
    if (dup2(null_fd, 0) < 0 || dup2(s->log_fd, 1) < 0 || dup2(s->log_fd, 2) < 0)
        fail_child(errfd, CRSNAP_STAGE_STDIO);
    if (cloexec_from(3) != 0)
        fail_child(errfd, CRSNAP_STAGE_STDIO);
    if (s->gid >= 0 && (setgroups(0, NULL) != 0 || setgid((gid_t)s->gid) != 0))
        fail_child(errfd, CRSNAP_STAGE_SETUID);
    if (s->uid >= 0 && setuid((uid_t)s->uid) != 0)
        fail_child(errfd, CRSNAP_STAGE_SETUID);
    if (chdir(s->workdir ? s->workdir : "/") != 0)
        fail_child(errfd, CRSNAP_STAGE_CHDIR);
    environ = (char **)s->envp;
    execvp(s->argv[0], (char *const *)s->argv);
    fail_child(errfd, CRSNAP_STAGE_EXEC);
    return 127;
}

/// clone3's argument, its first version (64 bytes; linux/sched.h's struct
/// clone_args, which glibc's headers do not carry).
struct crsnap_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

/// Clones the container's init; on success the read end of its report pipe
/// is in *report_fd.
static pid_t clone_container(const struct crsnap_container_spec *spec, int *report_fd, int *stage, int *err) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        *stage = CRSNAP_STAGE_CLONE;
        *err = errno;
        return -1;
    }
    struct launch_arg arg = {spec, pipefd[1]};
    // clone3, not clone: CLONE_NEWTIME shares its bit with clone()'s exit
    // signal. The child is born in a time namespace of its own (offsets 0:
    // its clocks read as the host's until CRIU restores it with offsets
    // that carry on from a snapshot), and so is everything it starts.
    struct crsnap_clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWTIME;
    if (spec->new_net) args.flags |= CLONE_NEWNET;
    args.exit_signal = SIGCHLD;
    pid_t pid = (pid_t)syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) _exit(container_main(&arg));
    int clone_errno = errno;
    close(pipefd[1]);
    if (pid < 0) {
        close(pipefd[0]);
        *stage = CRSNAP_STAGE_CLONE;
        *err = clone_errno;
        return -1;
    }
    *report_fd = pipefd[0];
    return pid;
}

static int finish_launch(pid_t pid, int report_fd, int *stage, int *err) {
    int report[2];
    if (await_report(report_fd, pid, report)) {
        *stage = report[0];
        *err = report[1];
        return -1;
    }
    return 0;
}

pid_t crsnap_launch_container(const struct crsnap_container_spec *spec, int *stage, int *err) {
    int report_fd;
    pid_t pid = clone_container(spec, &report_fd, stage, err);
    if (pid < 0) return -1;
    return finish_launch(pid, report_fd, stage, err) == 0 ? pid : -1;
}

pid_t crsnap_launch_held(const struct crsnap_container_spec *spec, int *report_fd, int *stage, int *err) {
    return clone_container(spec, report_fd, stage, err);
}

int crsnap_launch_release(pid_t pid, int report_fd, int hold_write, int proceed, int *stage, int *err) {
    if (proceed) write_all(hold_write, "g", 1);
    close(hold_write);
    return finish_launch(pid, report_fd, stage, err);
}

static char *format_ns_path(char *buf, pid_t pid, const char *name) {
    // "/proc/<pid>/ns/<name>" without snprintf (not async-signal-safe).
    char digits[16];
    int nd = 0;
    unsigned int v = (unsigned int)pid;
    do {
        digits[nd++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    char *p = buf;
    memcpy(p, "/proc/", 6);
    p += 6;
    while (nd > 0) *p++ = digits[--nd];
    memcpy(p, "/ns/", 4);
    p += 4;
    size_t len = strlen(name);
    memcpy(p, name, len);
    p[len] = '\0';
    return buf;
}

static void exec_fail(const char *what) {
    const char *msg = strerror(errno);
    write_all(2, "crsnap exec: ", 13);
    write_all(2, what, strlen(what));
    write_all(2, ": ", 2);
    write_all(2, msg, strlen(msg));
    write_all(2, "\n", 1);
    _exit(127);
}

pid_t crsnap_exec_in(pid_t target, const char *const argv[], const char *const envp[],
                     int in_fd, int out_fd, int die_with_helper) {
    pid_t helper = fork();
    if (helper != 0) return helper;

    // Open every namespace first: after entering the mount namespace, /proc
    // is the container's and the host pid means nothing there. The time
    // namespace gives the command the container's clocks (this helper is
    // single-threaded, as entering one requires).
    static const char *const names[] = {"ipc", "uts", "net", "pid", "time", "mnt"};
    enum { count = sizeof names / sizeof names[0] };
    int fds[count];
    char path[64];
    for (int i = 0; i < count; i++) {
        fds[i] = open(format_ns_path(path, target, names[i]), O_RDONLY | O_CLOEXEC);
        if (fds[i] < 0) exec_fail("open namespace");
    }
    for (int i = 0; i < count; i++) {
        if (setns(fds[i], 0) != 0) exec_fail("setns");
        close(fds[i]);
    }
    // Entering a pid namespace takes effect for children only.
    pid_t child = fork();
    if (child < 0) exec_fail("fork");
    if (child == 0) {
        // The helper is outside this pid namespace, so getppid() is 0 here
        // and cannot tell whether it already died: a caller kills it only
        // long after the start.
        if (die_with_helper && prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) exec_fail("prctl");
        if (in_fd >= 0 && dup2(in_fd, 0) < 0) exec_fail("dup2 stdin");
        if (out_fd >= 0 && dup2(out_fd, 1) < 0) exec_fail("dup2 stdout");
        if (chdir("/") != 0) exec_fail("chdir");
        environ = (char **)envp;
        execvp(argv[0], (char *const *)argv);
        exec_fail(argv[0]);
    }
    int status;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR) _exit(127);
    }
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

/// In a fork child: fd i becomes fdmap[i] (-1: closed) for i < nfds, every
/// other fd close-on-exec. Returns the error pipe's new fd (also moved).
static int place_fds(int errfd, const int *fdmap, int nfds) {
    // Move the sources above the target range first, so that placing one
    // cannot clobber another; the error pipe moves too.
    int base = nfds + 1;
    int moved[64];
    if (nfds > 64) nfds = 64;
    errfd = fcntl(errfd, F_DUPFD_CLOEXEC, base);
    if (errfd < 0) _exit(127);
    for (int i = 0; i < nfds; i++) {
        moved[i] = -1;
        if (fdmap[i] >= 0) {
            moved[i] = fcntl(fdmap[i], F_DUPFD_CLOEXEC, base);
            if (moved[i] < 0) fail_child(errfd, CRSNAP_STAGE_STDIO);
        }
    }
    for (int i = 0; i < nfds; i++) {
        if (moved[i] >= 0) {
            if (dup2(moved[i], i) < 0) fail_child(errfd, CRSNAP_STAGE_STDIO);
        } else {
            close(i);
        }
    }
    if (cloexec_from((unsigned int)nfds) != 0) fail_child(errfd, CRSNAP_STAGE_STDIO);
    return errfd;
}

pid_t crsnap_spawn_isolated(const char *path, const char *const argv[], const char *const envp[],
                            const int *fdmap, int nfds, int *stage, int *err) {
    int pipefd[2];
    *stage = 0;
    *err = 0;
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        *stage = CRSNAP_STAGE_FORK;
        *err = errno;
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        *stage = CRSNAP_STAGE_FORK;
        *err = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        return -1;
    }
    if (pid == 0) {
        close(pipefd[0]);
        int errfd = place_fds(pipefd[1], fdmap, nfds);
        // The helper dies with its caller, the program with the helper.
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != parent) _exit(127);
        if (unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID) != 0) fail_child(errfd, CRSNAP_STAGE_UNSHARE);
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) fail_child(errfd, CRSNAP_STAGE_MOUNT_PRIVATE);
        if (loopback_up() != 0) fail_child(errfd, CRSNAP_STAGE_LOOPBACK);
        pid_t child = fork();
        if (child < 0) fail_child(errfd, CRSNAP_STAGE_FORK);
        if (child == 0) {
            // pid 1 of the new pid namespace (its parent, outside, reads as
            // pid 0): its own /proc.
            if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) _exit(127);
            if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
                fail_child(errfd, CRSNAP_STAGE_MOUNT_PROC);
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
            execve(path, (char *const *)argv, (char *const *)envp);
            fail_child(errfd, CRSNAP_STAGE_EXEC);
        }
        close(errfd);
        for (int i = 0; i < nfds; i++) close(i);
        int status = 0;
        while (waitpid(child, &status, 0) < 0) {
            if (errno != EINTR) _exit(127);
        }
        _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    }
    close(pipefd[1]);
    int report[2];
    if (await_report(pipefd[0], pid, report)) {
        *stage = report[0];
        *err = report[1];
        return -1;
    }
    return pid;
}

pid_t crsnap_spawn(const char *path, const char *const argv[], const char *const envp[],
                   const int *fdmap, int nfds, int new_session) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        errno = e;
        return -1;
    }
    if (pid == 0) {
        int errfd = place_fds(pipefd[1], fdmap, nfds);
        if (new_session && setsid() < 0) fail_child(errfd, CRSNAP_STAGE_SETSID);
        // Reset what a multithreaded parent may have blocked.
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(path, (char *const *)argv, (char *const *)envp);
        fail_child(errfd, CRSNAP_STAGE_EXEC);
    }
    close(pipefd[1]);
    int report[2];
    if (await_report(pipefd[0], pid, report)) {
        errno = report[1];
        return -1;
    }
    return pid;
}

int crsnap_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

int crsnap_syncfs(int fd) {
    return syncfs(fd);
}

int crsnap_close_range_from(int first) {
    return (int)syscall(SYS_close_range, (unsigned int)first, ~0U, 0);
}

int crsnap_pipe2(int fds[2], int flags) {
    return pipe2(fds, flags);
}

int crsnap_ficlone(int dst, int src) {
    return ioctl(dst, FICLONE, src);
}

int crsnap_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int crsnap_uffd_wake(int pidfd, int fd, unsigned long long start, unsigned long long len) {
    int uffd = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    if (uffd < 0) return -1;
    struct uffdio_range range = { .start = start, .len = len };
    int rc = ioctl(uffd, UFFDIO_WAKE, &range);
    int saved = errno;
    close(uffd);
    errno = saved;
    return rc;
}

static int unix_sockets_of(int nl, struct crsnap_unix_socket *out, int max);

int crsnap_unix_sockets(struct crsnap_unix_socket *out, int max) {
    return unix_sockets_of(socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG), out, max);
}

int crsnap_unix_sockets_in(pid_t pid, struct crsnap_unix_socket *out, int max) {
    char path[64];
    int target = open(format_ns_path(path, pid, "net"), O_RDONLY | O_CLOEXEC);
    if (target < 0) return -1;
    int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home < 0) {
        close(target);
        return -1;
    }
    int nl = -1, e = 0;
    if (setns(target, CLONE_NEWNET) == 0) {
        nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
        e = errno;
        if (setns(home, CLONE_NEWNET) != 0) abort();  // never run on in the container's network
    } else {
        e = errno;
    }
    close(target);
    close(home);
    errno = e;
    return unix_sockets_of(nl, out, max);
}

static int unix_sockets_of(int nl, struct crsnap_unix_socket *out, int max) {
    if (nl < 0) return -1;
    struct {
        struct nlmsghdr nlh;
        struct unix_diag_req req;
    } msg;
    memset(&msg, 0, sizeof(msg));
    msg.nlh.nlmsg_len = sizeof(msg);
    msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    msg.req.sdiag_family = AF_UNIX;
    msg.req.udiag_states = -1;
    msg.req.udiag_show = UDIAG_SHOW_PEER | UDIAG_SHOW_NAME;
    if (send(nl, &msg, sizeof(msg), 0) != (ssize_t)sizeof(msg)) {
        int e = errno;
        close(nl);
        errno = e;
        return -1;
    }
    static char buf[32768] __attribute__((aligned(NLMSG_ALIGNTO)));
    int n = 0;
    for (;;) {
        ssize_t len = recv(nl, buf, sizeof(buf), 0);
        if (len < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(nl);
            errno = e;
            return -1;
        }
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)len); h = NLMSG_NEXT(h, len)) {
            if (h->nlmsg_type == NLMSG_DONE) {
                close(nl);
                return n;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                struct nlmsgerr *err = NLMSG_DATA(h);
                close(nl);
                errno = err->error ? -err->error : EIO;
                return -1;
            }
            struct unix_diag_msg *m = NLMSG_DATA(h);
            if (n >= max) continue;
            struct crsnap_unix_socket *s = &out[n++];
            memset(s, 0, sizeof(*s));
            s->ino = m->udiag_ino;
            s->type = m->udiag_type;
            int alen = h->nlmsg_len - NLMSG_LENGTH(sizeof(*m));
            for (struct rtattr *a = (struct rtattr *)(m + 1); RTA_OK(a, alen); a = RTA_NEXT(a, alen)) {
                if (a->rta_type == UNIX_DIAG_PEER && RTA_PAYLOAD(a) >= sizeof(uint32_t)) {
                    memcpy(&s->peer, RTA_DATA(a), sizeof(uint32_t));
                } else if (a->rta_type == UNIX_DIAG_NAME && RTA_PAYLOAD(a) > 0) {
                    size_t l = RTA_PAYLOAD(a);
                    if (l > sizeof(s->name) - 1) l = sizeof(s->name) - 1;
                    memcpy(s->name, RTA_DATA(a), l);
                    s->name[l] = '\0';
                    // A path ends at its NUL (the length may count it); an
                    // abstract name starts with one and may hold more: '@'.
                    if (s->name[0] == '\0') {
                        for (size_t i = 0; i < l; i++) if (s->name[i] == '\0') s->name[i] = '@';
                    }
                }
            }
        }
    }
}

static uint64_t extent_total, extent_exclusive;
static int extent_errno;
static void *extent_links;  // tsearch tree of the (dev, ino) of files with several links

struct extent_inode { dev_t dev; ino_t ino; };

static int extent_inode_cmp(const void *a, const void *b) {
    const struct extent_inode *x = a, *y = b;
    if (x->dev != y->dev) return x->dev < y->dev ? -1 : 1;
    if (x->ino != y->ino) return x->ino < y->ino ? -1 : 1;
    return 0;
}

static int extent_visit(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)ftw;
    if (type != FTW_F || !S_ISREG(st->st_mode)) return 0;
    if (st->st_nlink > 1) {
        // A file with several names counts once.
        struct extent_inode *key = malloc(sizeof(*key));
        if (!key) return 0;
        key->dev = st->st_dev;
        key->ino = st->st_ino;
        struct extent_inode **found = tsearch(key, &extent_links, extent_inode_cmp);
        if (!found || *found != key) {
            free(key);
            return 0;
        }
    }
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
    if (fd < 0 && errno == EPERM) fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return 0;  // gone meanwhile: nothing to count
    enum { N = 256 };
    static union {
        struct fiemap fm;
        char bytes[sizeof(struct fiemap) + N * sizeof(struct fiemap_extent)];
    } buf;
    uint64_t start = 0;
    for (;;) {
        memset(&buf, 0, sizeof(buf));
        buf.fm.fm_start = start;
        buf.fm.fm_length = ~0ULL - start;
        buf.fm.fm_extent_count = N;
        if (ioctl(fd, FS_IOC_FIEMAP, &buf.fm) != 0) {
            extent_errno = errno;
            close(fd);
            return 1;
        }
        if (buf.fm.fm_mapped_extents == 0) break;
        int last = 0;
        for (unsigned i = 0; i < buf.fm.fm_mapped_extents; i++) {
            struct fiemap_extent *e = &buf.fm.fm_extents[i];
            start = e->fe_logical + e->fe_length;
            if (e->fe_flags & FIEMAP_EXTENT_LAST) last = 1;
            // As `btrfs filesystem du`: inline extents live in the metadata
            // (no data space), delalloc and unknown ones have no place yet.
            if (e->fe_flags & (FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_UNKNOWN)) continue;
            extent_total += e->fe_length;
            if (!(e->fe_flags & FIEMAP_EXTENT_SHARED)) extent_exclusive += e->fe_length;
        }
        if (last) break;
    }
    close(fd);
    return 0;
}

int crsnap_extent_bytes(const char *root, uint64_t *total, uint64_t *exclusive) {
    extent_total = extent_exclusive = 0;
    extent_errno = 0;
    int r = nftw(root, extent_visit, 32, FTW_PHYS | FTW_MOUNT);
    tdestroy(extent_links, free);
    extent_links = NULL;
    if (r != 0) {
        errno = extent_errno ? extent_errno : errno;
        return -1;
    }
    *total = extent_total;
    *exclusive = extent_exclusive;
    return 0;
}
