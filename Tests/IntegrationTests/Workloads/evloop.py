# A threaded event-loop program (RealServicesTests) using what servers use:
# epoll over a timerfd, a signalfd, a pipe fed by a thread, a unix socketpair
# to an echo thread, an eventfd from a third thread, a listening unix socket
# for control, a POSIX lock and a flock. It checks itself as it goes: the
# pipe's numbers and the echo's answers come in order, the timer ticks, every
# thread is alive. `state` on the control socket answers with its counters
# and the first error it saw, if any.
import ctypes, fcntl, json, os, select, signal, socket, struct, threading, time

DIR = "/srv/crsnap-evloop"
os.makedirs(DIR, exist_ok=True)
libc = ctypes.CDLL(None, use_errno=True)

def timerfd(interval_ns):
    fd = libc.timerfd_create(1, 0o4000)  # CLOCK_MONOTONIC, TFD_NONBLOCK
    if fd < 0:
        raise OSError(ctypes.get_errno(), "timerfd_create")
    s, ns = divmod(interval_ns, 10**9)
    spec = struct.pack("qqqq", s, ns, s, ns)  # it_interval, it_value
    if libc.timerfd_settime(fd, 0, ctypes.c_char_p(spec), None) != 0:
        raise OSError(ctypes.get_errno(), "timerfd_settime")
    return fd

def signalfd(signals):
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    mask = 0
    for s in signals:
        mask |= 1 << (s - 1)
    fd = libc.signalfd(-1, ctypes.c_char_p(struct.pack("Q", mask)), 0o4000)  # SFD_NONBLOCK
    if fd < 0:
        raise OSError(ctypes.get_errno(), "signalfd")
    return fd

state = {"token": os.urandom(8).hex(), "ticks": 0, "signals": 0, "piped": 0, "echoed": 0, "events": 0,
         "error": None, "beats": {}}
lock = threading.Lock()

def fail(why):
    with lock:
        if state["error"] is None:
            state["error"] = why

def beat(name):
    with lock:
        state["beats"][name] = time.monotonic()

# Signals go to the signalfd, in every thread (blocked before threads start).
sfd = signalfd([signal.SIGUSR1, signal.SIGUSR2])
tfd = timerfd(5_000_000)
pr, pw = os.pipe()
os.set_blocking(pr, False)
mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
efd = os.eventfd(0, os.EFD_NONBLOCK)

lockfile = os.open(DIR + "/posix.lock", os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(lockfile, fcntl.LOCK_EX)
flockfile = os.open(DIR + "/flock.lock", os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(flockfile, fcntl.LOCK_EX)

def piper():
    i = 0
    while True:
        i += 1
        os.write(pw, b"%d\n" % i)
        beat("piper")
        time.sleep(0.002)

def echoer():
    while True:
        msg = theirs.recv(64)
        theirs.send(b"pong " + msg[5:])
        beat("echoer")

def eventer():
    while True:
        os.eventfd_write(efd, 1)
        beat("eventer")
        time.sleep(0.003)

for f in (piper, echoer, eventer):
    threading.Thread(target=f, daemon=True, name=f.__name__).start()

ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
path = DIR + "/ctl.sock"
if os.path.exists(path):
    os.unlink(path)
ctl.bind(path)
ctl.listen(8)
ctl.setblocking(False)

ep = select.epoll()
for fd in (tfd, sfd, pr, mine.fileno(), efd, ctl.fileno()):
    ep.register(fd, select.EPOLLIN)

pipebuf = b""
sent = 0
mine.send(b"ping 1")
sent = 1
last_tick = time.monotonic()
print("ready", flush=True)
while True:
    for fd, _ in ep.poll(1.0):
        if fd == tfd:
            n = struct.unpack("Q", os.read(tfd, 8))[0]
            with lock:
                state["ticks"] += n
            last_tick = time.monotonic()
        elif fd == sfd:
            while True:
                try:
                    info = os.read(sfd, 128)
                except BlockingIOError:
                    break
                with lock:
                    state["signals"] += 1
        elif fd == pr:
            pipebuf += os.read(pr, 65536)
            *lines, pipebuf = pipebuf.split(b"\n")
            for line in lines:
                if int(line) != state["piped"] + 1:
                    fail("pipe: %s after %d" % (line, state["piped"]))
                with lock:
                    state["piped"] = int(line)
        elif fd == mine.fileno():
            answer = mine.recv(64)
            if answer != b"pong %d" % sent:
                fail("echo: %r to ping %d" % (answer, sent))
            with lock:
                state["echoed"] = sent
            sent += 1
            mine.send(b"ping %d" % sent)
        elif fd == efd:
            with lock:
                state["events"] += os.eventfd_read(efd)
        elif fd == ctl.fileno():
            conn, _ = ctl.accept()
            with lock:
                now = time.monotonic()
                out = dict(state, beats={k: round((now - v) * 1000) for k, v in state["beats"].items()},
                           tick_age_ms=round((now - last_tick) * 1000))
            conn.sendall(json.dumps(out).encode())
            conn.close()
