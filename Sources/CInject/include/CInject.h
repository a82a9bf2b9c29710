// Running a system call inside another process: the one thing crsnap needs
// ptrace for. After a CRIU restore the restored tasks may have lost file
// locks that only they can hold again (a POSIX lock belongs to the file table
// of the process that took it), so crsnap takes them again from inside each
// process while the tree is still stopped.
#ifndef CRSNAP_CINJECT_H
#define CRSNAP_CINJECT_H

#include <stdint.h>
#include <sys/types.h>

enum crsnap_lock_kind {
    CRSNAP_LOCK_POSIX = 1,   // fcntl(F_SETLK): owned by the process's file table
    CRSNAP_LOCK_OFD = 2,     // fcntl(F_OFD_SETLK): owned by the open file description
    CRSNAP_LOCK_FLOCK = 3,   // flock(2): owned by the open file description
};

/// One lock to take inside the process, through its own descriptor `fd`.
struct crsnap_lock_request {
    int kind;        // enum crsnap_lock_kind
    int fd;
    int write;       // 1: F_WRLCK / LOCK_EX, 0: F_RDLCK / LOCK_SH
    int64_t start;   // POSIX and OFD only: first byte
    int64_t len;     // POSIX and OFD only: bytes; 0 = to the end of the file and beyond
    int error;       // out: 0, or the errno the call returned inside the process
};

/// Takes `requests` inside process `pid`, which must be stopped (a group stop,
/// e.g. by SIGSTOP): attaches with PTRACE_SEIZE, runs one non-blocking lock
/// call per request in the process itself (F_SETLK, F_OFD_SETLK, flock with
/// LOCK_NB), puts its registers, code and stack words back and detaches; the
/// process stays stopped. A signal that arrives meanwhile is delivered on
/// detach. Returns 0 when every call ran (each request's outcome in its
/// `error`), or -errno when the injection itself failed, with `*what` naming
/// the step. The caller must be the thread that may wait for `pid` (the
/// process is attached and detached within this call).
int crsnap_take_locks_in_task(pid_t pid, struct crsnap_lock_request *requests, int n, const char **what);

#endif
