# File locks of every kind, held across take and rollback (FileLockTests).
#
# The holder (pid 1 of the container) maps /var/lib/crsnap-locks/mapped
# MAP_SHARED and holds POSIX locks on it: read on byte 10, write on bytes
# 100-109; an flock on "flocked"; an OFD write lock on bytes 0-4 of "ofd".
# A second process holds a POSIX read lock on byte 128 of "shm", which it
# maps shared (SQLite's WAL index and its DMS lock have that shape). A third
# waits in F_SETLKW for bytes 100-109 of "mapped". A thread sleeps in the
# holder, so it is a multithreaded process.
#
# SIGUSR1 to the holder releases its write lock; the waiter then says
# "waiter got the lock" and holds it.
import fcntl, mmap, os, signal, struct, sys, threading, time

D = "/var/lib/crsnap-locks"
os.makedirs(D, exist_ok=True)


def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def opened(name, size=4096):
    fd = os.open(os.path.join(D, name), os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, size)
    return fd


mapped = opened("mapped")
view = mmap.mmap(mapped, 4096, mmap.MAP_SHARED)
fcntl.lockf(mapped, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 10)
fcntl.lockf(mapped, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 100)
flocked = opened("flocked")
fcntl.flock(flocked, fcntl.LOCK_EX | fcntl.LOCK_NB)
ofd = opened("ofd")
F_OFD_SETLK = 37
fcntl.fcntl(ofd, F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 5, 0))

if os.fork() == 0:
    shm = opened("shm", 32768)
    index = mmap.mmap(shm, 32768, mmap.MAP_SHARED)
    fcntl.lockf(shm, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 128)
    while True:
        time.sleep(1)

if os.fork() == 0:
    os.close(mapped)
    again = os.open(os.path.join(D, "mapped"), os.O_RDWR)
    say("waiter waiting")
    fcntl.lockf(again, fcntl.LOCK_EX, 10, 100)
    say("waiter got the lock")
    while True:
        time.sleep(1)


def release(signum, frame):
    fcntl.lockf(mapped, fcntl.LOCK_UN, 10, 100)
    say("holder released")


signal.signal(signal.SIGUSR1, release)
threading.Thread(target=lambda: time.sleep(1 << 30), daemon=True).start()
say("ready")
while True:
    time.sleep(1)
