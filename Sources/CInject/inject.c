// See CInject.h. The technique is the one CRIU's compel uses to run a system
// call in a seized task (borrow the instruction at the task's instruction
// pointer, put everything back afterwards), written here for the one call
// crsnap needs and nothing else: no parasite, no shared memory.
#define _GNU_SOURCE
#include "CInject.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <sys/user.h>

_Static_assert(sizeof(struct flock) == 32, "struct flock is four words on x86_64");
#define SCRATCH_WORDS 4

struct task {
    pid_t pid;
    struct user_regs_struct regs;   // as found; put back on detach
    int regs_saved;
    unsigned long code_at;          // where the borrowed instruction is
    long code;                      // the word that was there
    int code_patched;
    unsigned long scratch_at;       // stack words the call's struct borrows
    long scratch[SCRATCH_WORDS];    // what they held
    int scratch_saved;
    int pending_signal;             // a signal that arrived meanwhile: delivered on detach
};

static int peek(pid_t pid, unsigned long addr, long *out) {
    errno = 0;
    long v = ptrace(PTRACE_PEEKDATA, pid, (void *)addr, NULL);
    if (v == -1 && errno != 0) return -errno;
    *out = v;
    return 0;
}

static int poke(pid_t pid, unsigned long addr, long value) {
    return ptrace(PTRACE_POKEDATA, pid, (void *)addr, (void *)value) < 0 ? -errno : 0;
}

/// The next stop of the attached task: 0 with its status, -ESRCH when it died.
static int wait_stop(pid_t pid, int *status) {
    for (;;) {
        pid_t r = waitpid(pid, status, __WALL);
        if (r == pid) return WIFSTOPPED(*status) ? 0 : -ESRCH;
        if (r < 0 && errno == EINTR) continue;
        return r < 0 ? -errno : -ESRCH;
    }
}

/// Lets the task run to its next system-call stop (entry or exit). A group
/// stop met on the way is passed over; a signal is held back and delivered on
/// detach (one kind at most).
static int to_syscall_stop(struct task *t) {
    for (int i = 0; i < 32; i++) {
        if (ptrace(PTRACE_SYSCALL, t->pid, NULL, NULL) < 0) return -errno;
        int status = 0;
        int r = wait_stop(t->pid, &status);
        if (r < 0) return r;
        int sig = WSTOPSIG(status);
        if (sig == (SIGTRAP | 0x80)) return 0;
        if ((status >> 16) != 0) continue;
        if (t->pending_signal != 0 && t->pending_signal != sig) return -EAGAIN;
        t->pending_signal = sig;
    }
    return -EAGAIN;
}

/// The state letter of /proc/PID/stat ('T' for stopped), or 0.
static char task_state(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *close_paren = strrchr(buf, ')');
    return close_paren && close_paren[1] == ' ' ? close_paren[2] : 0;
}

/// Puts back what was borrowed and detaches. Errors are ignored: the task may
/// be gone, and the caller already has the error that matters.
static void release(struct task *t) {
    if (t->scratch_saved)
        for (int i = 0; i < SCRATCH_WORDS; i++) poke(t->pid, t->scratch_at + 8 * i, t->scratch[i]);
    if (t->code_patched) poke(t->pid, t->code_at, t->code);
    if (t->regs_saved) ptrace(PTRACE_SETREGS, t->pid, NULL, &t->regs);
    ptrace(PTRACE_DETACH, t->pid, NULL, (void *)(long)t->pending_signal);
}

/// Runs one system call with up to three arguments in the task; its return
/// value (a negative errno on failure) in *result.
static int remote_syscall(struct task *t, long nr, long a0, long a1, long a2, long *result, const char **what) {
    struct user_regs_struct call = t->regs;
    call.rip = t->code_at;
    call.rax = nr;
    call.orig_rax = -1;  // no system-call restart for the borrowed registers
    call.rdi = a0;
    call.rsi = a1;
    call.rdx = a2;
    *what = "set the registers for the call";
    if (ptrace(PTRACE_SETREGS, t->pid, NULL, &call) < 0) return -errno;
    *what = "run to the call's entry";
    int r = to_syscall_stop(t);
    if (r < 0) return r;
    struct user_regs_struct now;
    if (ptrace(PTRACE_GETREGS, t->pid, NULL, &now) < 0) return -errno;
    if ((long)now.orig_rax != nr) return -EPROTO;
    *what = "run to the call's exit";
    if ((r = to_syscall_stop(t)) < 0) return r;
    if (ptrace(PTRACE_GETREGS, t->pid, NULL, &now) < 0) return -errno;
    *result = (long)now.rax;
    return 0;
}

int crsnap_take_locks_in_task(pid_t pid, struct crsnap_lock_request *requests, int n, const char **what) {
    struct task t;
    memset(&t, 0, sizeof(t));
    t.pid = pid;
    int r = 0, status = 0;
    *what = "check the process";
    if (pid <= 1 || n < 0) return -EINVAL;
    char state = task_state(pid);
    if (state == 0) return -ESRCH;
    *what = "attach (PTRACE_SEIZE)";
    if (ptrace(PTRACE_SEIZE, pid, NULL, (void *)(long)PTRACE_O_TRACESYSGOOD) < 0) return -errno;
    // A stopped task traps at once on seize; a running one is asked to.
    if (state != 'T' && state != 't') {
        *what = "interrupt (PTRACE_INTERRUPT)";
        if (ptrace(PTRACE_INTERRUPT, pid, NULL, NULL) < 0) { r = -errno; goto out; }
    }
    *what = "wait for the process to stop under ptrace";
    if ((r = wait_stop(pid, &status)) < 0) return r;  // gone: nothing to put back
    *what = "read the registers";
    if (ptrace(PTRACE_GETREGS, pid, NULL, &t.regs) < 0) { r = -errno; goto out_release; }
    t.regs_saved = 1;

    *what = "borrow the instruction at the instruction pointer";
    t.code_at = t.regs.rip;
    if ((r = peek(pid, t.code_at, &t.code)) < 0) goto out_release;
    if ((r = poke(pid, t.code_at, (t.code & ~0xffffL) | 0x050fL)) < 0) goto out_release;  // 0f 05: syscall
    t.code_patched = 1;

    *what = "borrow stack words for the call's argument";
    t.scratch_at = t.regs.rsp & ~7UL;
    for (int i = 0; i < SCRATCH_WORDS; i++)
        if ((r = peek(pid, t.scratch_at + 8 * i, &t.scratch[i])) < 0) goto out_release;
    t.scratch_saved = 1;

    for (int i = 0; i < n; i++) {
        struct crsnap_lock_request *q = &requests[i];
        long nr, a1, a2 = 0, result = 0;
        if (q->kind == CRSNAP_LOCK_FLOCK) {
            nr = SYS_flock;
            a1 = (q->write ? LOCK_EX : LOCK_SH) | LOCK_NB;
        } else if (q->kind == CRSNAP_LOCK_POSIX || q->kind == CRSNAP_LOCK_OFD) {
            union { struct flock fl; long words[SCRATCH_WORDS]; } arg;
            memset(&arg, 0, sizeof(arg));
            arg.fl.l_type = q->write ? F_WRLCK : F_RDLCK;
            arg.fl.l_whence = SEEK_SET;
            arg.fl.l_start = q->start;
            arg.fl.l_len = q->len;
            *what = "write the lock's description into the process";
            for (int w = 0; w < SCRATCH_WORDS; w++)
                if ((r = poke(pid, t.scratch_at + 8 * w, arg.words[w])) < 0) goto out_release;
            nr = SYS_fcntl;
            a1 = q->kind == CRSNAP_LOCK_POSIX ? F_SETLK : F_OFD_SETLK;
            a2 = (long)t.scratch_at;
        } else {
            r = -EINVAL;
            *what = "unknown lock kind";
            goto out_release;
        }
        if ((r = remote_syscall(&t, nr, q->fd, a1, a2, &result, what)) < 0) goto out_release;
        q->error = result < 0 ? (int)-result : 0;
    }
    r = 0;
    *what = "done";
out_release:
    release(&t);
    return r;
out:
    ptrace(PTRACE_DETACH, pid, NULL, NULL);
    return r;
}

#else

int crsnap_take_locks_in_task(pid_t pid, struct crsnap_lock_request *requests, int n, const char **what) {
    (void)pid; (void)requests; (void)n;
    *what = "take file locks inside a process (implemented for x86_64 only)";
    return -ENOSYS;
}

#endif
