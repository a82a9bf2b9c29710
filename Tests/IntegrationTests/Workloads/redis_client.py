# A client of redis on the host (RealServicesTests), speaking RESP itself.
#   load PORT STOPFILE REPORT: until STOPFILE exists, write k:I = I and n = I
#     in one MULTI/EXEC for I = 1, 2, ... and SAVE every 50 writes; on a lost
#     connection (a reset, EOF or a 3 s silence) reconnect and carry on from the
#     server's n, as a real client would. Writes a JSON report at the end.
#   check PORT: prints JSON {n, dbsize, missing, wrong}: n and whether every
#     k:1..k:n holds its number (the writes are atomic, so any instant has
#     exactly keys k:1..k:n and n).
import json, os, socket, sys, time

def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s, s.makefile("rb")

def command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out

def reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("EOF")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) < n + 2:
            raise ConnectionError("EOF")
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [reply(f) for _ in range(n)]
    raise RuntimeError("bad reply %r" % line)

def call(s, f, *args):
    s.sendall(command(*args))
    return reply(f)

def load(port, stopfile, report):
    ops = reconnects = 0
    longest = 0.0
    s = f = None
    i = 0
    deadline_down = None
    while not os.path.exists(stopfile):
        t0 = time.monotonic()
        try:
            if s is None:
                s, f = connect(port)
                i = int(call(s, f, "GET", "n") or 0)
            i += 1
            s.sendall(command("MULTI") + command("SET", "k:%d" % i, i) + command("SET", "n", i) + command("EXEC"))
            for _ in range(3):
                reply(f)
            if reply(f) is None:
                raise RuntimeError("EXEC aborted")
            ops += 1
            if ops % 50 == 0:
                call(s, f, "SAVE")
            deadline_down = None
        except (OSError, ConnectionError):
            if s is not None:
                s.close()
            s = f = None
            reconnects += 1
            deadline_down = deadline_down or time.monotonic() + 60
            if time.monotonic() > deadline_down:
                raise SystemExit("redis_client: no connection for 60 s")
            time.sleep(0.02)
        longest = max(longest, time.monotonic() - t0)
    with open(report, "w") as out:
        json.dump({"ops": ops, "reconnects": reconnects, "last": i, "longest_ms": round(longest * 1000)}, out)

def check(port):
    s, f = connect(port)
    n = int(call(s, f, "GET", "n") or 0)
    dbsize = call(s, f, "DBSIZE")
    missing = wrong = 0
    for start in range(1, n + 1, 1000):
        keys = ["k:%d" % j for j in range(start, min(n, start + 999) + 1)]
        for j, v in zip(range(start, start + len(keys)), call(s, f, "MGET", *keys)):
            if v is None:
                missing += 1
            elif int(v) != j:
                wrong += 1
    print(json.dumps({"n": n, "dbsize": dbsize, "missing": missing, "wrong": wrong}))

if sys.argv[1] == "load":
    load(int(sys.argv[2]), sys.argv[3], sys.argv[4])
else:
    check(int(sys.argv[2]))
